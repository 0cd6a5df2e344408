"""A visual run: the shared run folder (`rwkv_core.run.Run`) plus the image encoder and projector
(visual.json, and the "visual.*" weights in model.safetensors) and the text tokenizer (the World tokenizer or the run's trimmed
subset: visual depends on text for it, as the README says).

    vlm, tokenizer = VisualRun.open("runs/demo/visual").load()
"""
from eaglefinch.rwkv_core.run import Run
from eaglefinch.text.run import check_vocabulary, run_tokenizer

from .model import VisualRWKV


class VisualRun(Run):
    domain = "visual"
    opens_bare_models = False   # the encoder and projector live in the run folder

    def tokenizer(self):
        return run_tokenizer(self)

    def load(self, device="cpu"):
        """(VisualRWKV in eval mode, tokenizer), checked to agree."""
        vlm, tokenizer = VisualRWKV.load(self, device), self.tokenizer()
        check_vocabulary(vlm.model, tokenizer, self.folder)
        return vlm, tokenizer

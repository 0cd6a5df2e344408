"""A music run: the shared run folder (`rwkv_core.run.Run`) plus the MIDI tokenizer it was trained
with (tokenizer.json, the vocabulary of the prepared data).

    model, tokenizer = MusicRun.open("runs/music").load()
"""
import torch

from eaglefinch.rwkv_core.checkpoint import CheckpointError
from eaglefinch.rwkv_core.run import Run

from .tokenizer import MidiTokenizer

TOKENIZER_FILE = "tokenizer.json"


class MusicRun(Run):
    domain = "music"
    opens_bare_models = False   # a music model is nothing without its vocabulary

    def tokenizer(self) -> MidiTokenizer:
        path = self.file(TOKENIZER_FILE)
        if not path.is_file():
            raise CheckpointError(f"{self.folder}: not a music run (no {TOKENIZER_FILE})")
        try:
            return MidiTokenizer.load(path)
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path}: not a valid MIDI tokenizer ({e})") from None

    def load(self, dtype=torch.float32, device="cpu", adapters=None):
        """(model in eval mode, tokenizer), checked to agree. `adapters`: a LoRA adapters file to
        run with unmerged, instead of the run's own (`Run.load_model`)."""
        model, tokenizer = self.load_model(dtype, device, adapters=adapters), self.tokenizer()
        if model.cfg.vocab_size != tokenizer.vocab_size:
            raise CheckpointError(f"{self.model_file} has {model.cfg.vocab_size} outputs but its tokenizer "
                                  f"{tokenizer.vocab_size} ids")
        return model, tokenizer

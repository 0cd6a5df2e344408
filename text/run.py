"""A text run: the shared run folder (`rwkv_core.run.Run`) plus the tokenizer it was trained with.

    run = TextRun.open("runs/demo/text")       # a run folder, its model.safetensors, or an official .pth
    model, tokenizer = run.load_model(), run.tokenizer()

A run with a trimmed vocabulary keeps the World ids it uses in vocab_subset.json (see subset.py);
any other text model, official checkpoints included, uses the full World tokenizer.
"""
import torch

from eaglefinch.rwkv_core.checkpoint import CheckpointError
from eaglefinch.rwkv_core.run import Run

from .subset import SubsetTokenizer
from .tokenizer import WorldTokenizer

VOCAB_FILE = "vocab_subset.json"


class TextRun(Run):
    domain = "text"
    opens_bare_models = True   # an official .pth is a text model

    def tokenizer(self):
        """World, or the run's trimmed subset of it (vocab_subset.json)."""
        return run_tokenizer(self)

    def load(self, dtype=torch.float32, device="cpu", state=None, adapters=None):
        """(model in eval mode, tokenizer), checked to agree. `adapters`: a LoRA adapters file to
        run with unmerged, instead of the run's own (`Run.load_model`)."""
        model, tokenizer = self.load_model(dtype, device, state, adapters), self.tokenizer()
        check_vocabulary(model, tokenizer, self.folder)
        return model, tokenizer


def run_tokenizer(run: Run):
    """The tokenizer of a text or visual run: the World tokenizer, or its trimmed subset."""
    path = run.file(VOCAB_FILE)
    if run.is_bare or not path.is_file():
        return WorldTokenizer()
    try:
        return SubsetTokenizer.load(WorldTokenizer(), path)
    except ValueError as e:
        raise CheckpointError(str(e)) from None


def check_vocabulary(model, tokenizer, where) -> None:
    """A trimmed vocabulary must have exactly one id per model output."""
    if isinstance(tokenizer, SubsetTokenizer) and tokenizer.vocab_size != model.cfg.vocab_size:
        raise CheckpointError(f"{where}: {VOCAB_FILE} lists {tokenizer.vocab_size} ids but the model has "
                              f"{model.cfg.vocab_size} outputs")


def save_vocabulary(run: Run, tokenizer) -> None:
    """A trimmed vocabulary's vocab_subset.json; with the full World vocabulary, none (one left in the
    folder by an earlier run is removed, or it would be read as this run's)."""
    if isinstance(tokenizer, SubsetTokenizer):
        tokenizer.save(run.file(VOCAB_FILE))
    elif run.file(VOCAB_FILE).exists():
        run.file(VOCAB_FILE).unlink()

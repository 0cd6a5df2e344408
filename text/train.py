"""Text training: the shared trainer on World-tokenised shards, with an optional trimmed vocabulary.

    train_text("text-tiny", "runs/data", "runs/text")                    # a new model
    train_text("text-tiny", "runs/data", "runs/ft", init="RWKV-x060-World-1B6.pth")  # fine-tuning
    train_text("text-tiny", "runs/data", "runs/ft", init="runs/ft", resume=True)     # go on

Nothing in the run folder is touched before the first checkpoint (except the trainer's
metrics.jsonl): the model, config.json and vocab_subset.json are written together at each one, so
fine-tuning into an existing run (even the one it starts from) never leaves it half replaced.
"""
import dataclasses
from dataclasses import dataclass

import torch

from eaglefinch.rwkv_core import RWKV, RunConfig
from eaglefinch.rwkv_core.config import dataclass_from_dict
from eaglefinch.rwkv_core.data import DataError
from eaglefinch.rwkv_core.run import Run
from eaglefinch.rwkv_core.train import NextTokenTask, load_splits, train

from .run import VOCAB_FILE, TextRun
from .subset import MappedTokens, SubsetTokenizer, used_ids
from .tokenizer import WorldTokenizer


@dataclass
class TextConfig:
    """The "text" section of a text run config."""

    trim_vocab: bool = False   # a new model gets one output per World id the corpus uses (small models)


class TextTask(NextTokenTask):
    """Next-token training of a text model; its inference files are config.json, vocab_subset.json
    (a trimmed vocabulary) and model.safetensors, all rewritten at each checkpoint."""

    def __init__(self, model, tokenizer, run_config: RunConfig, l2wrap=True):
        super().__init__(model, l2wrap)
        self.tokenizer, self.run_config = tokenizer, run_config

    def save_pretrained(self, run: Run) -> None:
        run.save_config(self.run_config)
        trimmed = isinstance(self.tokenizer, SubsetTokenizer)
        if trimmed:  # before the model: a reader sees a mismatched pair (refused) or a matching one
            self.tokenizer.save(run.file(VOCAB_FILE))
        super().save_pretrained(run)
        if not trimmed:  # a subset left by an earlier run goes only once the new model is in place
            run.file(VOCAB_FILE).unlink(missing_ok=True)


def train_text(config, data_dir, out_dir, *, max_steps=None, resume=False, seed=None, init=None,
               progress=True, deepspeed_config=None) -> float:
    """Train (or fine-tune from `init`: a text run folder, a .safetensors or an official .pth) a text
    model; the run folder gets the trainer's files, config.json and, trimmed, vocab_subset.json.
    `resume` continues the run in `out_dir` with its own model and vocabulary (`init` is then not read).
    Returns the last step's training loss.

    A model's vocabulary must cover the corpus: a trimmed one (from `init` or `resume`) must have
    every World id of the shards, a full one every id below its vocab_size; otherwise a DataError
    names the data, before anything is written.

    With `deepspeed_config` (e.g. "deepspeed/zero2") every process of the `deepspeed` launcher runs
    this; only rank 0 writes the run folder's files.
    """
    run_config = RunConfig.load(config, "text")
    text_cfg = dataclass_from_dict(TextConfig, run_config.section, "text config")
    train_cfg = run_config.train.with_overrides(max_steps, seed)
    train_data, val_data = load_splits(data_dir, train_cfg.ctx_len)
    splits = [train_data] + ([val_data] if val_data else [])
    if resume:  # everything is read before anything is written
        if not Run(out_dir).model_file.is_file():
            raise FileNotFoundError(f"cannot resume: {Run(out_dir).model_file} does not exist")
        model, tokenizer = TextRun.open(out_dir).load()
    elif init is not None:
        model, tokenizer = TextRun.open(init).load()
        run_config = dataclasses.replace(run_config, model=None)  # the model is the checkpoint's
    else:
        tokenizer = WorldTokenizer()
        if text_cfg.trim_vocab:
            tokenizer = SubsetTokenizer(tokenizer, used_ids(*splits))
        torch.manual_seed(train_cfg.seed)  # the new model's weights follow the run's seed
        overrides = {"vocab_size": tokenizer.vocab_size} if isinstance(tokenizer, SubsetTokenizer) else {}
        model = RWKV(run_config.model_config(**overrides), progress=progress)
    check_coverage(splits, tokenizer, model.cfg.vocab_size, data_dir)
    if isinstance(tokenizer, SubsetTokenizer):
        train_data = MappedTokens(train_data, tokenizer.ids)
        val_data = val_data and MappedTokens(val_data, tokenizer.ids)
    task = TextTask(model, tokenizer, run_config, train_cfg.l2wrap)
    return train(task, train_cfg, train_data, out_dir, val_data=val_data, resume=resume, progress=progress,
                 deepspeed_config=deepspeed_config)


def check_coverage(splits, tokenizer, vocab_size: int, data_dir) -> None:
    """Refuse shards with ids the model has no output for (the embedding would index out of range)."""
    if isinstance(tokenizer, SubsetTokenizer):
        outside = sorted(set(used_ids(*splits)) - set(tokenizer.ids))
        if outside:
            raise DataError(f"{data_dir}: {len(outside)} World ids the model's trimmed vocabulary does not have "
                            f"(e.g. {outside[0]}); train a new model on this corpus instead")
    elif vocab_size <= 65535:  # a uint16 shard id is always below 65536
        largest = max(int(array.max()) for stream in splits for array in stream.arrays if len(array))
        if largest >= vocab_size:
            raise DataError(f"{data_dir}: token id {largest} but the model has only {vocab_size} outputs; "
                            f"was the data prepared with the World tokenizer for this model?")

"""Text training: the shared trainer on World-tokenised shards, with an optional trimmed vocabulary.

    train_text("text-tiny", "runs/data", "runs/text")                    # a new model
    train_text("text-tiny", "runs/data", "runs/ft", init="RWKV-x060-World-1B6.pth")  # fine-tuning
"""
import dataclasses
from dataclasses import dataclass

import torch

from eaglefinch.rwkv_core import RWKV, RunConfig
from eaglefinch.rwkv_core.config import dataclass_from_dict
from eaglefinch.rwkv_core.data import DataError
from eaglefinch.rwkv_core.run import Run
from eaglefinch.rwkv_core.train import NextTokenTask, is_main_process, load_splits, train

from .run import VOCAB_FILE, TextRun, save_vocabulary
from .subset import MappedTokens, SubsetTokenizer, used_ids
from .tokenizer import WorldTokenizer


@dataclass
class TextConfig:
    """The "text" section of a text run config."""

    trim_vocab: bool = False   # a new model gets one output per World id the corpus uses (small models)


def train_text(config, data_dir, out_dir, *, max_steps=None, resume=False, seed=None, init=None,
               progress=True, deepspeed_config=None) -> float:
    """Train (or fine-tune from `init`: a text run folder, a .safetensors or an official .pth) a text
    model; the run folder gets the trainer's files, config.json and, trimmed, vocab_subset.json.
    Returns the last step's training loss.

    With `deepspeed_config` (e.g. "deepspeed/zero2") every process of the `deepspeed` launcher runs
    this; only rank 0 writes the run folder's files.
    """
    run_config = RunConfig.load(config, "text")
    text_cfg = dataclass_from_dict(TextConfig, run_config.section, "text config")
    train_cfg = run_config.train.with_overrides(max_steps, seed)
    run = Run(out_dir)
    train_data, val_data = load_splits(data_dir, train_cfg.ctx_len)
    if init is not None:   # the model and its vocabulary come from the checkpoint, read before anything is written
        model, tokenizer = TextRun.open(init).load()
        run_config = dataclasses.replace(run_config, model=None)  # the model is the checkpoint's
    else:
        tokenizer = WorldTokenizer()
        if text_cfg.trim_vocab:
            saved = run.file(VOCAB_FILE)
            ids = (SubsetTokenizer.load(tokenizer, saved).ids if resume and saved.is_file()
                   else used_ids(train_data, *([val_data] if val_data else [])))
            tokenizer = SubsetTokenizer(tokenizer, ids)
        torch.manual_seed(train_cfg.seed)  # the new model's weights follow the run's seed
        overrides = {"vocab_size": tokenizer.vocab_size} if isinstance(tokenizer, SubsetTokenizer) else {}
        model = RWKV(run_config.model_config(**overrides))
    if isinstance(tokenizer, SubsetTokenizer):
        outside = sorted(set(used_ids(train_data, *([val_data] if val_data else []))) - set(tokenizer.ids))
        if outside:
            raise DataError(f"{data_dir}: {len(outside)} World ids the model's trimmed vocabulary does not have "
                            f"(e.g. {outside[0]}); train a new model on this corpus instead")
        train_data = MappedTokens(train_data, tokenizer.ids)
        val_data = val_data and MappedTokens(val_data, tokenizer.ids)
    run.folder.mkdir(parents=True, exist_ok=True)
    if is_main_process():  # under DeepSpeed, rank 0 alone writes the run's files
        save_vocabulary(run, tokenizer)
        run.save_config(run_config)
    return train(NextTokenTask(model, train_cfg.l2wrap), train_cfg, train_data, run.folder, val_data=val_data,
                 resume=resume, progress=progress, deepspeed_config=deepspeed_config)

"""Music training: the shared trainer on MIDI-event shards written by `music.prepare.prepare`.

    train_music("music-tiny", "runs/music-data", "runs/music")

The model is a plain RWKV whose vocabulary is the tokenizer's (its head is the music head). The
tokenizer comes from the shards' index metadata and is saved in the run folder as
`tokenizer.json`, so generation and evaluation decode with exactly the vocabulary trained on.
"""
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from eaglefinch.rwkv_core import RWKV, RunConfig
from eaglefinch.rwkv_core.config import dataclass_from_dict
from eaglefinch.rwkv_core.data import INDEX_NAME, DataError, TokenDataset
from eaglefinch.rwkv_core.run import Run
from eaglefinch.rwkv_core.train import NextTokenTask, is_main_process, load_splits, train

from .run import TOKENIZER_FILE, MusicRun
from .tokenizer import MidiTokenizer

@dataclass
class MusicConfig:
    """The "music" section of a music run config (no options yet: the tokenizer comes with the data)."""


def data_tokenizer(data_dir, split: str = "train") -> MidiTokenizer:
    """The tokenizer stored in the index of `<data_dir>/<split>` by `music.prepare.prepare`."""
    if not (Path(data_dir) / split / INDEX_NAME).is_file():
        raise DataError(f"{data_dir}: no '{split}' split of prepared data (a folder written by "
                        f"`eaglefinch music prepare MIDI_FOLDER --out DATA`)")
    meta = TokenDataset(data_dir, split).metadata
    if "tokenizer" not in meta or not isinstance(meta["tokenizer"], dict):
        raise DataError(f"{data_dir}: not music data (no MIDI tokenizer in its index); "
                        f"write it with `eaglefinch music prepare`")
    return MidiTokenizer.from_dict(meta["tokenizer"])


def train_music(config, data_dir, out_dir, *, max_steps=None, resume=False, seed=None, init=None,
                progress=True, deepspeed_config=None) -> float:
    """Train (or fine-tune from `init`, a music run) a music model; returns the last step's training loss.

    The run folder gets the trainer's files (model.safetensors, checkpoint.pt, metrics.jsonl,
    loss.png) plus config.json and tokenizer.json.
    """
    run_config = RunConfig.load(config, "music")
    dataclass_from_dict(MusicConfig, run_config.section, "music config")
    train_cfg = run_config.train.with_overrides(max_steps, seed)
    tokenizer = data_tokenizer(data_dir)
    train_data, val_data = load_splits(data_dir, train_cfg.ctx_len)
    run = Run(out_dir)
    if init is not None:
        model, init_tokenizer = MusicRun.open(init).load()
        run_config = dataclasses.replace(run_config, model=None)  # the model is the checkpoint's
        if init_tokenizer.to_dict() != tokenizer.to_dict():
            raise ValueError(f"{data_dir} was tokenized differently from the run {init}: prepare it with the same options")
    else:
        torch.manual_seed(train_cfg.seed)  # the new model's weights follow the run's seed
        model = RWKV(run_config.model_config(vocab_size=tokenizer.vocab_size), progress=progress)
    saved = run.file(TOKENIZER_FILE)
    if resume and saved.exists() and MidiTokenizer.load(saved).to_dict() != tokenizer.to_dict():
        raise ValueError(f"cannot resume: {data_dir} was tokenized differently from the run in {out_dir}")
    run.folder.mkdir(parents=True, exist_ok=True)
    if is_main_process():  # under DeepSpeed, rank 0 alone writes the run folder's files
        tokenizer.save(saved)
        run.save_config(run_config)
    return train(NextTokenTask(model, train_cfg.l2wrap), train_cfg, train_data, run.folder, val_data=val_data,
                 resume=resume, progress=progress, deepspeed_config=deepspeed_config)

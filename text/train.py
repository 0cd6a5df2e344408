"""Text training: the shared trainer on World-tokenised shards, with an optional trimmed vocabulary."""
import json
from pathlib import Path

from rwkv_core import RWKV, RWKVConfig
from rwkv_core.runs import copy_config, run_config, run_folder
from rwkv_core.train import NextTokenTask, is_main_process, load_splits, train

from .subset import MappedTokens, SubsetTokenizer, used_ids
from .tokenizer import WorldTokenizer

VOCAB_FILE = "vocab_subset.json"
SECTIONS = ("model", "train", "text")


def train_text(config_path, data_dir, out_dir, *, max_steps=None, resume=False, seed=None, init=None,
               progress=True, deepspeed_config=None) -> float:
    """Train (or fine-tune from `init`) a text model; the run folder gets model.safetensors & co.

    With `deepspeed_config` (a JSON path, e.g. configs/deepspeed/zero2.json) every process of the
    `deepspeed` launcher runs this; only rank 0 writes the run folder's files.
    """
    cfg, train_cfg = run_config(config_path, SECTIONS, max_steps, seed)
    out_dir = Path(out_dir)
    train_data, val_data = load_splits(data_dir, train_cfg.ctx_len)
    if init:
        model = RWKV.from_pretrained(init)
        trim = False  # an official model keeps its full vocabulary
    else:
        model_cfg = RWKVConfig.from_dict(cfg["model"])
        trim = cfg.get("text", {}).get("trim_vocab", False)
        if trim:
            vocab_path = out_dir / VOCAB_FILE
            if resume and vocab_path.exists():
                ids = json.loads(vocab_path.read_text())["world_ids"]
            else:
                ids = used_ids(train_data, *([val_data] if val_data else []))
            model_cfg.vocab_size = len(ids)
        model = RWKV(model_cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    main = is_main_process()  # under DeepSpeed, rank 0 alone writes these files
    if trim:
        if main and not (resume and (out_dir / VOCAB_FILE).exists()):  # resuming ranks may be reading it
            SubsetTokenizer(WorldTokenizer(), ids).save(out_dir / VOCAB_FILE)
        train_data = MappedTokens(train_data, ids)
        val_data = val_data and MappedTokens(val_data, ids)
    elif main and (out_dir / VOCAB_FILE).exists():
        (out_dir / VOCAB_FILE).unlink()
    if main:
        copy_config(config_path, out_dir)
    return train(NextTokenTask(model, train_cfg.l2wrap), train_cfg, train_data, out_dir, val_data=val_data,
                 resume=resume, progress=progress, deepspeed_config=deepspeed_config)


def tokenizer_for(checkpoint):
    """The tokenizer a checkpoint was trained with: World, or the run's trimmed subset of it."""
    world = WorldTokenizer()
    subset = run_folder(checkpoint) / VOCAB_FILE
    return SubsetTokenizer.load(world, subset) if subset.exists() else world

"""Music training: the shared trainer on MIDI-event shards written by `music.prepare.prepare`.

    train_music("configs/music-tiny.json", "runs/music-data", "runs/music")

The model is a plain RWKV whose vocabulary is the tokenizer's (its head is the music head). The
tokenizer comes from the shards' index metadata and is saved in the run folder as
`tokenizer.json`, so generation and evaluation decode with exactly the vocabulary trained on.
"""
from pathlib import Path

from rwkv_core import RWKV, RWKVConfig
from rwkv_core.data import INDEX_NAME, DataError, TokenDataset
from rwkv_core.runs import copy_config, model_file, run_config, run_folder
from rwkv_core.train import NextTokenTask, is_main_process, load_splits, train

from .tokenizer import MidiTokenizer

TOKENIZER_FILE = "tokenizer.json"
SECTIONS = ("model", "train")  # of a training config (configs/music-tiny.json)


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


def train_music(config_path, data_dir, out_dir, *, max_steps=None, resume=False, seed=None, init=None,
                progress=True, deepspeed_config=None) -> float:
    """Train (or fine-tune from `init`) a music model; returns the last step's training loss.

    The run folder gets the trainer's files (model.safetensors, checkpoint.pt, metrics.jsonl,
    loss.png) plus config.json and tokenizer.json.
    """
    cfg, train_cfg = run_config(config_path, SECTIONS, max_steps, seed)
    tokenizer = data_tokenizer(data_dir)
    train_data, val_data = load_splits(data_dir, train_cfg.ctx_len)
    if init:
        model = RWKV.from_pretrained(init)
    else:
        model = RWKV(RWKVConfig.from_dict({**cfg["model"], "vocab_size": tokenizer.vocab_size}))
    if model.cfg.vocab_size != tokenizer.vocab_size:
        raise ValueError(f"the model has {model.cfg.vocab_size} outputs but the data's MIDI vocabulary "
                         f"{tokenizer.vocab_size} ids")
    out_dir = Path(out_dir)
    saved = out_dir / TOKENIZER_FILE
    if resume and saved.exists() and MidiTokenizer.load(saved).to_dict() != tokenizer.to_dict():
        raise ValueError(f"cannot resume: {data_dir} was tokenized differently from the run in {out_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    if is_main_process():  # under DeepSpeed, rank 0 alone writes the run folder's files
        tokenizer.save(saved)
        copy_config(config_path, out_dir)
    return train(NextTokenTask(model, train_cfg.l2wrap), train_cfg, train_data, out_dir, val_data=val_data,
                 resume=resume, progress=progress, deepspeed_config=deepspeed_config)


def load_run(checkpoint):
    """(model in eval mode, tokenizer) of a run folder, or of a model file with tokenizer.json beside it."""
    model_path, folder = model_file(checkpoint), run_folder(checkpoint)
    if not (folder / TOKENIZER_FILE).is_file():
        raise FileNotFoundError(f"{folder / TOKENIZER_FILE} not found: not a music run")
    try:
        tokenizer = MidiTokenizer.load(folder / TOKENIZER_FILE)
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{folder / TOKENIZER_FILE}: not a valid MIDI tokenizer ({e})") from None
    model = RWKV.from_pretrained(model_path).eval()
    if model.cfg.vocab_size != tokenizer.vocab_size:
        raise ValueError(f"{model_path} has {model.cfg.vocab_size} outputs but its tokenizer "
                         f"{tokenizer.vocab_size} ids")
    return model, tokenizer

"""The paper's music setting: byte-level models of ABC notation, Eagle against Finch in bits per byte.

    write_abc_data("runs/abc/data")                                   # music21's ABC tunes -> shards
    results = compare_archs("abc-tiny", "runs/abc/data", "runs/abc")

Each tune is its ASCII bytes, token id = byte value (vocabulary 128), tunes separated by 0 (never
a byte of the text). A tune goes whole to train or val by a hash of its text, so duplicated
tunes never straddle the split. Both architectures get the same model shape, training config,
seed and number of steps; bits per byte = total held-out nats / ln 2 / held-out bytes, where the
separators are scored but have no bytes (their nats are charged to the text, as for text models).
"""
import math
from contextlib import ExitStack
from pathlib import Path

import torch

from eaglefinch.rwkv_core import RWKV, RunConfig
from eaglefinch.rwkv_core.files import write_json_atomic
from eaglefinch.rwkv_core.data import SEPARATOR, DataError, ShardWriter, TokenDataset, folder_written_whole, split_of
from eaglefinch.rwkv_core.heldout import heldout_nats
from eaglefinch.rwkv_core.train import NextTokenTask, train

from .corpus import abc_tunes

VOCAB_SIZE = 128
ARCHS = ("eagle", "finch")
RESULTS_FILE = "abc.json"


def write_abc_data(out_dir, tunes=None, val_fraction: float = 0.05) -> dict:
    """Write ABC tunes (default: every ASCII tune of music21's corpus) as byte shards in out_dir.

    out_dir must be absent or empty; it appears only when complete. Returns {"train"|"val": {"docs", "tokens"}}.
    """
    tunes = abc_tunes() if tunes is None else tunes
    metadata = {"tokenizer": "bytes", "vocab_size": VOCAB_SIZE}
    with folder_written_whole(out_dir) as tmp, ExitStack() as stack:  # an error aborts both writers
        writers = {s: stack.enter_context(ShardWriter(tmp, s, metadata=metadata)) for s in ("train", "val")}
        for tune in tunes:
            data = tune.encode("ascii")  # raises for a non-ASCII tune: it has no byte-level id
            if SEPARATOR in data:
                raise DataError("an ABC tune holds a NUL byte, which is the tune separator")
            writers[split_of(tune, val_fraction)].add(list(data))
    return {s: {"docs": w.docs, "tokens": w.tokens} for s, w in writers.items()}


def bits_per_byte(model, data, ctx_len: int, batch_size: int = 8, max_tokens: int | None = None) -> dict:
    """{"bytes", "tokens", "bits_per_byte"} of a byte-level model on a split."""
    nats, counts = heldout_nats(model, data, ctx_len, batch_size, max_tokens)
    n_bytes = int(counts.sum() - counts[SEPARATOR])
    return {"bytes": n_bytes, "tokens": int(counts.sum()), "bits_per_byte": nats / math.log(2) / n_bytes}


def compare_archs(config, data_dir, out_dir, *, max_steps=None, seed=None, eval_tokens=None,
                  archs=ARCHS, progress=True, device=None) -> dict:
    """Train each architecture from scratch on the same data and budget; score the val split.

    `config`: a shipped config's name or a JSON file (model and train sections), or a RunConfig.
    `device`: where to train (default: the GPU if there is one).

    Runs go to `<out_dir>/<arch>`; the results, also returned, to `<out_dir>/abc.json`:
    {"config", "steps", "batch_size", "ctx_len", "tokens_seen", <arch>: {"params", "train_loss",
    "bytes", "tokens", "bits_per_byte"}}.
    """
    named = not isinstance(config, RunConfig)
    run_config = RunConfig.load(config, "music") if named else config
    train_cfg = run_config.train.with_overrides(max_steps, seed)
    train_data, val_data = TokenDataset(data_dir, "train"), TokenDataset(data_dir, "val")
    if train_data.metadata.get("tokenizer") != "bytes":
        raise DataError(f"{data_dir}: not byte-level ABC data (write it with `eaglefinch music abc`)")
    out_dir = Path(out_dir)
    results = {"config": str(config) if named else run_config.to_dict(), "steps": train_cfg.max_steps,
               "batch_size": train_cfg.batch_size,
               "ctx_len": train_cfg.ctx_len, "tokens_seen": train_cfg.max_steps * train_cfg.batch_size * train_cfg.ctx_len}
    for arch in archs:
        torch.manual_seed(train_cfg.seed)  # every architecture starts from the same random stream
        model = RWKV(run_config.model_config(arch=arch, vocab_size=VOCAB_SIZE))
        loss = train(NextTokenTask(model, train_cfg.l2wrap), train_cfg, train_data, out_dir / arch,
                     val_data=val_data, progress=progress, device=device)
        scores = bits_per_byte(model, val_data, train_cfg.ctx_len, train_cfg.batch_size, eval_tokens)
        results[arch] = {"params": sum(p.numel() for p in model.parameters()), "train_loss": loss, **scores}
    write_json_atomic(out_dir / RESULTS_FILE, results)
    return results

"""Held-out loss of a token model, shared by the domains' `eval` commands.

    nats, counts = heldout_nats(model, TokenDataset("runs/data", "val"), ctx_len=256)
    loss = nats / counts.sum()        # nats per token; counts[i] = how many targets are id i
    curve, n = position_losses(model, stream, length=1024, chunk_len=256)   # mean loss at each position

Windows are non-overlapping and laid end to end from the start of the token stream (as the
trainer's validation does), each scored from the model's initial state; every target is scored
exactly once, the document separator included.
"""
import numpy as np
import torch
from tqdm import tqdm

from .data import DataError

HEAD_ELEMENTS = 1 << 24  # logits materialised at once (64 MB in fp32), whatever the vocabulary


def target_logprobs(model, hidden, targets, *, with_argmax=False):
    """Log-probability of each target [N] fp32 under the model's head on hidden [N, C] (after ln_out),
    and with `with_argmax` whether each target is the most likely token ([N] bool; else None). The
    head and softmax run on slices of at most HEAD_ELEMENTS logits, so a 65,536-token vocabulary fits."""
    rows = max(1, HEAD_ELEMENTS // model.cfg.vocab_size)
    logprobs, best = [], []
    for a in range(0, hidden.shape[0], rows):
        logp = model.head(hidden[a:a + rows]).float().log_softmax(-1)
        wanted = targets[a:a + rows]
        logprobs.append(logp.gather(1, wanted[:, None])[:, 0])
        if with_argmax:
            best.append(logp.argmax(-1) == wanted)
    return torch.cat(logprobs), (torch.cat(best) if with_argmax else None)


@torch.no_grad()
def window_losses(model, x, y, chunk_len: int) -> torch.Tensor:
    """Cross-entropy in nats of every target: [B, T] fp32 for inputs x and targets y, both [B, T].

    The model reads the window chunk_len tokens at a time and carries its state from chunk to
    chunk, which gives the same losses as one pass over the whole window; the head runs on slices
    (`target_logprobs`).
    """
    state, losses = None, []
    for start in range(0, x.shape[1], chunk_len):
        hidden, state = model.forward_hidden(x[:, start:start + chunk_len], state)
        targets = y[:, start:start + hidden.shape[1]]
        losses.append(-target_logprobs(model, hidden.flatten(0, 1), targets.flatten())[0].view(targets.shape))
    return torch.cat(losses, dim=1)


def count_windows(stream, length: int, max_tokens: int | None = None, option: str = "ctx_len") -> int:
    """How many windows of `length` targets to score: all that fit, or max_tokens' worth (at least one).

    `option` names the setting to lower in the error for a stream too short for one window.
    """
    n = (len(stream) - 1) // length
    if n == 0:
        raise DataError(f"{stream.name} has {len(stream)} tokens: too few for one window of {length} "
                        f"(needs {length + 1}); lower {option}")
    if max_tokens is not None:
        n = min(n, max(1, max_tokens // length))
    return n


def first_windows(stream, length: int, batch_size: int, n_windows: int):
    """(x, y) batches of the stream's first n_windows windows of `length` targets."""
    seen = 0
    for batch in stream.iter_batches(batch_size, length):
        x, y = batch.inputs[:n_windows - seen], batch.targets[:n_windows - seen]
        yield x, y
        seen += len(x)
        if seen == n_windows:
            return


@torch.no_grad()
def heldout_nats(model, stream, ctx_len: int, batch_size: int = 8, max_tokens: int | None = None,
                 map_ids=None, progress: bool = False):
    """(total nats, target counts [V] int64) over windows of ctx_len targets of a token stream.

    At most `max_tokens` targets (whole windows, at least one) when given. `map_ids`, if given,
    turns each (x, y) batch of stored ids into the model's ids (a trimmed vocabulary).
    """
    n_windows = count_windows(stream, ctx_len, max_tokens)
    vocab, device = model.cfg.vocab_size, model.emb.weight.device
    model.eval()
    nats, counts = 0.0, torch.zeros(vocab, dtype=torch.long)
    with tqdm(total=n_windows * ctx_len, unit="tok", desc=f"loss on {stream.name}", disable=not progress) as bar:
        for x, y in first_windows(stream, ctx_len, batch_size, n_windows):
            x, y = map_ids(x, y) if map_ids else (x, y)
            nats += window_losses(model, x.to(device), y.to(device), ctx_len).double().sum().item()
            counts += torch.bincount(y.flatten(), minlength=vocab)
            bar.update(y.numel())
    return nats, counts


@torch.no_grad()
def position_losses(model, stream, length: int, chunk_len: int, batch_size: int = 8, max_tokens: int | None = None,
                    map_ids=None, progress: bool = False, option: str = "length"):
    """(mean loss in nats at each position [length] float64, number of windows) over windows of
    `length` targets, each from the model's initial state and read chunk_len tokens at a time with
    the state carried (memory does not grow with the window). Position p's loss is the prediction
    made after p + 1 tokens of context: a curve still falling past the training ctx_len means the
    model uses more context than it was trained on. `option` names the setting to lower when the
    stream is too short for one window."""
    n_windows = count_windows(stream, length, max_tokens, option)
    device = model.emb.weight.device
    model.eval()
    position_nats = torch.zeros(length, dtype=torch.float64)
    with tqdm(total=n_windows * length, unit="tok", desc=f"{stream.name} by position", disable=not progress) as bar:
        for x, y in first_windows(stream, length, batch_size, n_windows):
            x, y = map_ids(x, y) if map_ids else (x, y)
            position_nats += window_losses(model, x.to(device), y.to(device), chunk_len).double().sum(0).cpu()
            bar.update(y.numel())
    return (position_nats / n_windows).numpy(), n_windows


@torch.no_grad()
def losses_at(model, stream, starts, length: int, chunk_len: int, batch_size: int = 8) -> torch.Tensor:
    """Cross-entropy in nats of every target, [len(starts), length] fp32 on the CPU: the windows of
    `length` targets that start at the stream offsets `starts` (any, overlapping or not), each from
    the model's initial state, read chunk_len tokens at a time with the state carried."""
    device = model.emb.weight.device
    model.eval()
    losses = []
    for a in range(0, len(starts), batch_size):
        w = torch.from_numpy(np.stack([stream.window(int(s), length + 1) for s in starts[a:a + batch_size]]))
        losses.append(window_losses(model, w[:, :-1].to(device), w[:, 1:].to(device), chunk_len).cpu())
    return torch.cat(losses)


def log_edges(length: int, n_buckets: int) -> list[int]:
    """Edges of about n_buckets log-spaced spans of positions 0..length-1: [0, 1, 2, ..., length]."""
    return np.unique(np.concatenate([[0], np.round(np.geomspace(1, length, n_buckets)).astype(int)])).tolist()


def span_means(curve, edges) -> list[dict]:
    """{"start", "end", "loss"}: the mean of a per-position curve over each span [edges[i], edges[i + 1])."""
    curve = np.asarray(curve)
    return [{"start": int(a), "end": int(b), "loss": float(curve[a:b].mean())} for a, b in zip(edges[:-1], edges[1:])]

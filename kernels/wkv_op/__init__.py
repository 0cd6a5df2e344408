"""The WKV op folder: `wkv(r, k, v, w_log, u, state=None, backend="auto", *, cu_seqlens=None)` and
`wkv_decode_(r, k, v, w_log, u, state, state_idx=None, backend="auto")` (in-place decode step) pick
one of its implementations: the serial fp64 reference (naive.py), the chunked PyTorch path
(chunk_torch.py) or the Triton kernels (triton/, imported only when taken)."""
import os

import torch

from .chunk_torch import wkv_chunked
from .naive import wkv_reference
from .offsets import device_offsets, host_offsets, to_device

__all__ = ["wkv", "wkv_decode_", "wkv_reference", "wkv_chunked", "host_offsets", "device_offsets", "to_device",
           "BACKENDS"]

BACKENDS = ("auto", "reference", "torch", "triton")


def _resolve(backend, x):
    if backend == "auto":
        return "triton" if x.is_cuda else "torch"
    if backend not in BACKENDS:
        raise ValueError(f"wkv: unknown backend {backend!r}; choose one of {BACKENDS}")
    interpreting = os.environ.get("TRITON_INTERPRET", "0") == "1"
    if backend == "triton" and not (x.is_cuda or interpreting):
        raise ValueError("wkv: backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors)")
    return backend


def _per_sequence(fn, r, k, v, w_log, u, state, cu_seqlens):
    """Packed sequences through an unpacked backend: one call per sequence (reference/torch paths)."""
    bounds = host_offsets(cu_seqlens).tolist()
    outs, states = [], []
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        w_i = w_log if w_log.dim() == 2 else w_log[:, a:b]
        o, s = fn(r[:, a:b], k[:, a:b], v[:, a:b], w_i, u, None if state is None else state[i:i + 1])
        outs.append(o)
        states.append(s)
    return torch.cat(outs, dim=1), torch.cat(states, dim=0)


# Both ops launch Triton kernels from host code (index tables, launch settings): torch.compile calls
# them as they are, between compiled parts, instead of tracing into them.
@torch.compiler.disable
def wkv(r, k, v, w_log, u, state=None, backend="auto", *, cu_seqlens=None, chunk_size=None,
        launch=None):
    """The WKV recurrence of Eagle/Finch over a sequence, with an explicit state.

    Args:
        r, k, v: [B, T, H, N] (any float dtype; accumulation is fp32).
        w_log: log of the decay, <= 0 and finite. Finch: per token [B, T, H, N]; Eagle: static [H, N]
            (broadcast, never materialised).
        u: [H, N] bonus for the current token.
        state: [S, H, N, N] fp32 state indexed [key, value], or None for zeros. Never modified.
            S = B, or the number of packed sequences with `cu_seqlens`.
        backend: "auto" ("triton" for CUDA tensors, else "torch"), "triton" (chunked Triton kernels;
            CPU tensors only under TRITON_INTERPRET=1), "torch" (chunked matrix form, the CPU path) or
            "reference" (serial, fp64).
        cu_seqlens: packed variable-length sequences: int tensor [S + 1] of offsets along T, B = 1;
            the state restarts at every boundary (from `state[i]`, or zeros).
        chunk_size: Triton chunk length (multiple of 16; default 64).
        launch: Triton launch settings (`triton.WKVLaunch`; None: `triton.DEFAULT_LAUNCH`).

    Returns:
        (out [B, T, H, N] in r's dtype, new_state [S, H, N, N] fp32).
    """
    if r.dim() != 4 or k.shape != r.shape or v.shape != r.shape:
        raise ValueError(f"wkv: r, k, v must share one [B, T, H, N] shape, got {tuple(r.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    B, T, H, N = r.shape
    if u.shape != (H, N):
        raise ValueError(f"wkv: u must be [H, N] = [{H}, {N}], got {tuple(u.shape)}")
    S, offsets = B, None
    if cu_seqlens is not None:
        offsets = host_offsets(cu_seqlens)
        if B != 1 or offsets.dim() != 1 or int(offsets[-1]) != T or int(offsets[0]) != 0:
            raise ValueError("wkv: cu_seqlens needs B = 1 and offsets [0, ..., T]")
        S = offsets.numel() - 1
    if state is not None and state.shape != (S, H, N, N):
        raise ValueError(f"wkv: state must be [{S}, {H}, {N}, {N}], got {tuple(state.shape)}")
    backend = _resolve(backend, r)
    if backend == "triton":
        from .triton import DEFAULT_LAUNCH, chunk_wkv
        if T == 0:
            return wkv_chunked(r, k, v, w_log, u, state)
        return chunk_wkv(r, k, v, w_log, u, state, cu_seqlens=cu_seqlens, cu_seqlens_cpu=offsets,
                         chunk_size=chunk_size or 64, launch=DEFAULT_LAUNCH if launch is None else launch)
    fn = wkv_reference if backend == "reference" else wkv_chunked
    if cu_seqlens is not None:
        return _per_sequence(fn, r, k, v, w_log, u, state, cu_seqlens)
    return fn(r, k, v, w_log, u, state)


@torch.compiler.disable
def wkv_decode_(r, k, v, w_log, u, state, state_idx=None, backend="auto"):
    """Advance `state` in place by the T (usually 1) tokens of each sequence; returns out [B, T, H, N].

    state: fp32 [slots, H, N, N]; sequence b uses slot `state_idx[b]` (distinct), or b when None.
    No autograd: this is the inference path. "auto" = Triton on CUDA, the torch path elsewhere.
    """
    backend = _resolve(backend, r)
    if backend == "triton":
        from .triton import wkv_decode_ as triton_decode_
        return triton_decode_(r, k, v, w_log, u, state, state_idx)
    idx = torch.arange(r.shape[0], device=state.device) if state_idx is None else state_idx.long()
    fn = wkv_reference if backend == "reference" else wkv_chunked
    out, new = fn(r, k, v, w_log, u, state[idx])
    state[idx] = new.to(state.dtype)
    return out

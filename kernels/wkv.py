"""Public entry point: `wkv(r, k, v, w_log, u, state=None, backend="auto")`."""
import torch

from .chunked import wkv_chunked
from .reference import wkv_reference

BACKENDS = ("auto", "reference", "torch")


def wkv(r, k, v, w_log, u, state=None, backend="auto"):
    """The WKV recurrence of Eagle/Finch over a sequence, with an explicit state.

    Args:
        r, k, v: [B, T, H, N] (any float dtype; accumulation is fp32).
        w_log: log of the decay, <= 0. Finch: per token [B, T, H, N]; Eagle: static [H, N]
            (broadcast, never materialised).
        u: [H, N] bonus for the current token.
        state: [B, H, N, N] fp32 state indexed [key, value], or None for zeros. Never modified.
        backend: "auto" (the fastest available for the device), "reference" (serial, fp64) or
            "torch" (chunked matrix form, the CPU path).

    Returns:
        (out [B, T, H, N] in r's dtype, new_state [B, H, N, N] fp32).
    """
    if r.dim() != 4 or k.shape != r.shape or v.shape != r.shape:
        raise ValueError(f"wkv: r, k, v must share one [B, T, H, N] shape, got {tuple(r.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    B, T, H, N = r.shape
    if u.shape != (H, N):
        raise ValueError(f"wkv: u must be [H, N] = [{H}, {N}], got {tuple(u.shape)}")
    if state is not None and state.shape != (B, H, N, N):
        raise ValueError(f"wkv: state must be [B, H, N, N] = [{B}, {H}, {N}, {N}], got {tuple(state.shape)}")
    if backend == "auto":
        backend = "torch"
    if backend == "reference":
        return wkv_reference(r, k, v, w_log, u, state)
    if backend == "torch":
        return wkv_chunked(r, k, v, w_log, u, state)
    raise ValueError(f"wkv: unknown backend {backend!r}; choose one of {BACKENDS}")

"""Fused recurrent WKV for decode (T = 1) and short prefills: the fp32 state is updated in place.

Layering: `_decode_kernel` -> host `wkv_decode_` (no autograd: inference only).

One program per (sequence, head, block of BV value channels) holds the [N, BV] slice of the state
in registers for all T steps; the full key extent stays in one program, so no split-K partial sums.
BV is small (16) so that batch 1 still launches H * N / 16 programs. Each step computes
    y[j] = sum_i r[i] (u[i] k[i] v[j] + S[i, j]),   S[i, j] <- exp(w[i]) S[i, j] + k[i] v[j].
"""
import torch
import triton
import triton.language as tl

from .utils import new_buffer

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _decode_kernel(r, k, v, w, u, o, state, state_idx, T, s_wb, s_wt,
                   H: tl.constexpr, N: tl.constexpr, BV: tl.constexpr, HAS_IDX: tl.constexpr):
    """Grid (N // BV, B * H). state: [slots, H, N, N] fp32, read and written in place."""
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    if HAS_IDX:
        slot = tl.load(state_idx + i_b).to(tl.int64)
    else:
        slot = i_b.to(tl.int64)
    keys = tl.arange(0, N)
    vals = i_v * BV + tl.arange(0, BV)
    s_ptr = state + (slot * H + i_h) * N * N + keys[:, None] * N + vals[None, :]
    S = tl.load(s_ptr)
    u_h = tl.load(u + i_h * N + keys).to(tl.float32)
    s_x = H * N
    x_off = i_b.to(tl.int64) * T * s_x + i_h * N
    w_off = i_b.to(tl.int64) * s_wb + i_h * N
    for t in range(0, T):
        r_t = tl.load(r + x_off + t * s_x + keys).to(tl.float32)
        k_t = tl.load(k + x_off + t * s_x + keys).to(tl.float32)
        v_t = tl.load(v + x_off + t * s_x + vals).to(tl.float32)
        w_t = tl.load(w + w_off + t * s_wt + keys).to(tl.float32)
        kv = k_t[:, None] * v_t[None, :]
        y = tl.sum(r_t[:, None] * (u_h[:, None] * kv + S), axis=0)
        tl.store(o + x_off + t * s_x + vals, y.to(o.dtype.element_ty))
        S = S * tl.exp2(w_t * LOG2E)[:, None] + kv
    tl.store(s_ptr, S)


def wkv_decode_(r, k, v, w_log, u, state, state_idx=None, block_v=16, poison=False):
    """Advance `state` in place by T tokens (decode T = 1, or a short prefill) and return the output.

    Args:
        r, k, v: [B, T, H, N] CUDA tensors (bf16/fp16/fp32).
        w_log: log decay <= 0: [B, T, H, N] (Finch) or [H, N] (Eagle).
        u: [H, N].
        state: fp32 [S, H, N, N] indexed [key, value]; rows `state_idx` (or 0..B-1) are updated in place.
        state_idx: optional int tensor [B]: the state slot of each sequence (a pool of conversations).
            Slots must be distinct.
        poison: fill the output with NaN first (tests: an element the kernel misses shows).

    Returns:
        out [B, T, H, N] in r's dtype.
    """
    B, T, H, N = r.shape
    if state.dtype != torch.float32 or not state.is_contiguous() or state.shape[1:] != (H, N, N):
        raise ValueError(f"wkv_decode_: state must be contiguous fp32 [S, {H}, {N}, {N}]")
    if state_idx is None and state.shape[0] != B:
        raise ValueError(f"wkv_decode_: state has {state.shape[0]} slots for {B} sequences; pass state_idx")
    r, k, v, u = (x.contiguous() for x in (r, k, v, u))
    if w_log.dim() == 2:
        w_log, s_wb, s_wt = w_log.contiguous(), 0, 0
    else:
        w_log = w_log.expand(B, T, H, N).contiguous()
        s_wb, s_wt = T * H * N, H * N
    o = new_buffer(r.shape, r.dtype, r.device, poison)
    BV = min(block_v, N)
    _decode_kernel[(N // BV, B * H)](
        r, k, v, w_log, u, o, state, state_idx, T, s_wb, s_wt,
        H=H, N=N, BV=BV, HAS_IDX=state_idx is not None, num_warps=1 if BV <= 16 else 2)
    return o

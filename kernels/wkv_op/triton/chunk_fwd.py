"""Chunked WKV forward: its Triton kernels and the host function `chunk_wkv_fwd`.

  1. `_fwd_state_kernel`: one program per (sequence, head, value slice) scans the chunks of BT tokens
     and stores the state at the start of every chunk (fp32) and the final state.
  2. `_fwd_whole_kernel`: one program per (chunk, head): the chunk's span; if bounded, its output from
     the chunk-start state and the factored in-chunk scores; else the flag. Its sums of log decays
     are 0/+-1-matrix products (`_row_sums`), not scans.
  3. `_fwd_out_kernel` (flagged chunks): one program per (chunk, head) starts from the stored chunk
     state and walks the chunk in sub-blocks of BS tokens (`launch.sub`): inter-block part by
     `tl.dot` against the running state; in-block part by levels (`_intra_scores`): the pairs s < t
     are split by the highest differing index bit G = BS/2, ..., 2, 1, and each level is one masked
     tensor-core product of r and k decayed to a reference row between s and t (every exponent
     <= 0). When a backward will run, it also stores these in-block scores (BS fp32 per token and
     head) for dv.
"""
import torch
import triton
import triton.language as tl

from .chunk_common import (LOG2E, _chunk_exponents, _chunk_ids, _level_operands, _level_pairs,
                           _load_block, _load_cols, _load_state, _mm, _row_sums, _seq_bounds,
                           _state_ptrs, _store_block, _to_end)
from .launch import launch_opts, scan_block_v, split_flags, sub_block, sub_block_levels
from .utils import new_buffer, segment_sum_precision


@triton.jit
def _scores_level(r, k, w_l, G: tl.constexpr, BS: tl.constexpr, PREC: tl.constexpr,
                  XPREC: tl.constexpr, SPLIT: tl.constexpr):
    q, kk, e = _level_operands(r, k, w_l, G, BS, XPREC, SPLIT)
    return tl.where(_level_pairs(G, BS), _mm(q, tl.trans(kk), G == 1, G == 1, SPLIT, PREC), 0.)


@triton.jit
def _intra_scores(r, k, w_l, BS: tl.constexpr, LEVELS: tl.constexpr, PREC: tl.constexpr,
                  XPREC: tl.constexpr, SPLIT: tl.constexpr):
    """In-block scores A[t, s] = sum_i r[t,i] k[s,i] 2^(gb_t[i] - g_s[i]) for s < t (0 elsewhere),
    exactly as a sum over levels of masked tensor-core products of decayed r and k (no exponent > 0)."""
    A = tl.zeros([BS, BS], dtype=tl.float32)
    for lvl in tl.static_range(LEVELS):
        A += _scores_level(r, k, w_l, BS // (2 << lvl), BS, PREC, XPREC, SPLIT)
    return A


@triton.jit
def _fwd_state_kernel(k, v, w, h0, ht, states, cu_seqlens, chunk_offsets, T, s_w,
                      H: tl.constexpr, N: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr,
                      HAS_H0: tl.constexpr, IS_VARLEN: tl.constexpr, PREC: tl.constexpr,
                      SPLIT: tl.constexpr):
    """Grid (N // BV, num_seqs * H): the [N, BV] value-slice of one head's state, scanned over chunks.
    states[chunk, h] = state before the chunk; ht = state after the sequence."""
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos, boc = _seq_bounds(i_n, cu_seqlens, chunk_offsets, T, BT, IS_VARLEN)
    L = eos - bos
    s_x = H * N
    k_ptr = k + bos * s_x + i_h * N
    v_ptr = v + bos * s_x + i_h * N
    w_ptr = w + bos * s_w + i_h * N
    if HAS_H0:
        S = tl.load(_state_ptrs(h0 + i_nh.to(tl.int64) * N * N, i_v * BV, N, BV))
    else:
        S = tl.zeros([N, BV], dtype=tl.float32)
    for c in range(0, tl.cdiv(L, BT)):
        tl.store(_state_ptrs(states + ((boc + c) * H + i_h) * N * N, i_v * BV, N, BV), S)
        k_b = _load_block(k_ptr, c * BT, L, s_x, BT, N)
        v_b = _load_cols(v_ptr, c * BT, L, s_x, i_v * BV, BT, BV)
        w_b = _load_block(w_ptr, c * BT, L, s_w, BT, N) * LOG2E
        g_last = tl.sum(w_b, axis=0)
        k_d = k_b * tl.exp2(_to_end(w_b))
        S = S * tl.exp2(g_last)[:, None] + _mm(tl.trans(k_d), v_b, False, True, SPLIT, PREC)
    tl.store(_state_ptrs(ht + i_nh.to(tl.int64) * N * N, i_v * BV, N, BV), S)


@triton.jit
def _fwd_whole_kernel(r, k, v, w, u, o, states, flags, cu_seqlens, chunk_offsets, chunk_indices, T,
                      s_w, H: tl.constexpr, N: tl.constexpr, BT: tl.constexpr, MAX_SPAN: tl.constexpr,
                      IS_VARLEN: tl.constexpr, PREC: tl.constexpr, SPLIT: tl.constexpr,
                      SPLIT_S: tl.constexpr):
    """Grid as `_fwd_out_kernel`: one chunk's output in whole-chunk products (M = BT; no state carried
    through sub-blocks), o = (r * 2^gb) S + A v + bonus, the in-chunk scores A in the factored form of
    `_chunk_exponents`. Only where that form is safe: a chunk whose half-chunk decay exceeds MAX_SPAN
    (log2 units) is flagged (flags[chunk, h] = 1) and left to `_fwd_out_kernel`."""
    i_h, c, bos, L, gc = _chunk_ids(cu_seqlens, chunk_offsets, chunk_indices, T, H, BT, IS_VARLEN)
    t0 = c * BT
    w_r = _load_block(w + bos * s_w + i_h * N, t0, L, s_w, BT, N)
    if not SPLIT:
        w_r = w_r * LOG2E   # `_row_sums`: log2 units unless split
    a, b, _, _ = _chunk_exponents(w_r, BT, SPLIT, PREC, True)
    flagged = tl.max(tl.max(tl.maximum(a, b), axis=1), axis=0) > MAX_SPAN   # b's last row, a's first
    tl.store(flags + gc * H + i_h, flagged.to(tl.int32))
    if flagged:
        return
    s_x = H * N
    off = bos * s_x + i_h * N
    r_b = _load_block(r + off, t0, L, s_x, BT, N)
    k_b = _load_block(k + off, t0, L, s_x, BT, N)
    v_b = _load_block(v + off, t0, L, s_x, BT, N)
    u_h = tl.load(u + i_h * N + tl.arange(0, N)).to(tl.float32)
    S = _load_state(states + (gc * H + i_h) * N * N, N)
    causal = tl.arange(0, BT)[None, :] < tl.arange(0, BT)[:, None]
    gb = _row_sums(tl.where(causal, 1.0, 0.0), w_r, SPLIT, PREC)
    o_b = _mm(r_b * tl.exp2(gb), S, False, False, SPLIT_S, PREC)
    A = tl.where(causal, _mm(r_b * tl.exp2(a), tl.trans(k_b * tl.exp2(b)), False, False, SPLIT, PREC), 0.)
    o_b += _mm(A, v_b, False, True, SPLIT, PREC)
    o_b += tl.sum(r_b * u_h[None, :] * k_b, axis=1)[:, None] * v_b
    _store_block(o + off, o_b, t0, L, s_x, BT, N)


@triton.jit
def _fwd_out_kernel(r, k, v, w, u, o, states, scores, flags, cu_seqlens, chunk_offsets, chunk_indices,
                    T, s_w, H: tl.constexpr, N: tl.constexpr, BT: tl.constexpr, BS: tl.constexpr,
                    LEVELS: tl.constexpr, IS_VARLEN: tl.constexpr, PREC: tl.constexpr,
                    XPREC: tl.constexpr, SPLIT: tl.constexpr, SPLIT_S: tl.constexpr,
                    STORE_A: tl.constexpr):
    """Grid (chunks, num_seqs * H) or (total chunks, H) when packed. Writes o for one chunk and,
    STORE_A, the in-block scores (row t: A[t, :] of its sub-block, [rows, H, BS] fp32) for the backward.
    SPLIT: bf16 split products (`_mm`) for the in-block and state-update dots; SPLIT_S: also for the
    dots against the fp32 state. Runs only on the chunks `_fwd_whole_kernel` flagged."""
    i_h, c, bos, L, gc = _chunk_ids(cu_seqlens, chunk_offsets, chunk_indices, T, H, BT, IS_VARLEN)
    if tl.load(flags + gc * H + i_h) == 0:
        return
    s_x = H * N
    off = bos * s_x + i_h * N
    w_ptr = w + bos * s_w + i_h * N
    S = _load_state(states + (gc * H + i_h) * N * N, N)
    u_h = tl.load(u + i_h * N + tl.arange(0, N)).to(tl.float32)
    for s in tl.static_range(BT // BS):
        t0 = c * BT + s * BS
        r_b = _load_block(r + off, t0, L, s_x, BS, N)
        k_b = _load_block(k + off, t0, L, s_x, BS, N)
        v_b = _load_block(v + off, t0, L, s_x, BS, N)
        w_r = _load_block(w_ptr, t0, L, s_w, BS, N)
        w_b = w_r * LOG2E
        gb = tl.cumsum(w_b, axis=0) - w_b
        A = _intra_scores(r_b, k_b, w_r if SPLIT else w_b, BS, LEVELS, PREC, XPREC, SPLIT)
        if STORE_A:
            _store_block(scores + bos * H * BS + i_h * BS, A, t0, L, H * BS, BS, BS)
        o_b = _mm(r_b * tl.exp2(gb), S, False, False, SPLIT_S, PREC)
        o_b += _mm(A, v_b, False, True, SPLIT, PREC)
        o_b += tl.sum(r_b * u_h[None, :] * k_b, axis=1)[:, None] * v_b
        _store_block(o + off, o_b, t0, L, s_x, BS, N)
        if s < BT // BS - 1:
            g_last = tl.sum(w_b, axis=0)
            k_d = k_b * tl.exp2(_to_end(w_b))
            S = S * tl.exp2(g_last)[:, None] + _mm(tl.trans(k_d), v_b, False, True, SPLIT, PREC)


def chunk_wkv_fwd(r, k, v, w, u, h0, lay, prec, poison=False, split=False, store_scores=False):
    """Returns o [B, T, H, N] (r's dtype), ht [num_seqs, H, N, N] fp32, chunk states fp32, the
    per-chunk flags [chunks, H] int32 (1: the chunk took the level kernels), and the in-block scores
    [B*T, H, BS] fp32 of the flagged chunks for the backward (None unless store_scores).
    lay: the call's `_Layout` (shapes, index tables and launch settings, chunk.py).
    split: r, k, v, w are bf16 and the dot precision is the default (see `_mm`)."""
    H, N, BT, launch = lay.H, lay.N, lay.BT, lay.launch
    sp, sp_s = split_flags(launch, split, "fwd_out")
    o = new_buffer(r.shape, r.dtype, r.device, poison)
    ht = new_buffer((lay.num_seqs, H, N, N), torch.float32, r.device, poison)
    states = new_buffer((lay.num_chunks, H, N, N), torch.float32, r.device, poison)
    if not lay.whole:
        flags = torch.ones((lay.num_chunks, H), dtype=torch.int32, device=r.device)
    elif poison:
        flags = torch.full((lay.num_chunks, H), -1, dtype=torch.int32, device=r.device)
    else:
        flags = torch.empty((lay.num_chunks, H), dtype=torch.int32, device=r.device)
    BS = sub_block(launch, BT)
    scores = new_buffer((lay.B * lay.T, H, BS), torch.float32, r.device, poison) if store_scores else None
    BV = scan_block_v(launch, N, lay.num_seqs * H)
    _fwd_state_kernel[(N // BV, lay.num_seqs * H)](
        k, v, w, h0, ht, states, lay.cu_seqlens, lay.chunk_offsets, lay.T, lay.s_w,
        H=H, N=N, BT=BT, BV=BV, HAS_H0=h0 is not None, IS_VARLEN=lay.varlen, PREC=prec, SPLIT=sp,
        **launch_opts(launch, N, "fwd_state"))
    if lay.whole:
        _fwd_whole_kernel[lay.out_grid](
            r, k, v, w, u, o, states, flags, lay.cu_seqlens, lay.chunk_offsets, lay.chunk_indices,
            lay.T, lay.s_w, H=H, N=N, BT=BT, MAX_SPAN=lay.max_span, IS_VARLEN=lay.varlen, PREC=prec,
            SPLIT=sp, SPLIT_S=sp_s, **launch_opts(launch, N, "fwd_whole"))
    _fwd_out_kernel[lay.out_grid](
        r, k, v, w, u, o, states, scores, flags, lay.cu_seqlens, lay.chunk_offsets, lay.chunk_indices,
        lay.T, lay.s_w, H=H, N=N, BT=BT, BS=BS, LEVELS=sub_block_levels(BS), IS_VARLEN=lay.varlen,
        PREC=prec, XPREC=segment_sum_precision(), SPLIT=sp, SPLIT_S=sp_s, STORE_A=store_scores,
        **launch_opts(launch, N, "fwd_out"))
    return o, ht, states, flags, scores

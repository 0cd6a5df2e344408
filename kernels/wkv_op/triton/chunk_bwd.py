"""Chunked WKV backward: its Triton kernels and the host function `chunk_wkv_bwd`.

  1. `_bwd_state_kernel`: reverse scan of the state gradient; stores the gradient at the end of every
     chunk, and dh0.
  2. `_bwd_whole_kernel` (chunks the forward did not flag): dr, dk, dv, dw and du of a chunk at once.
  Steps 3 and 4 run on the flagged chunks only.
  3. `_bwd_dr_kernel`: one program per (chunk, head), a forward sweep over the sub-blocks: dr (it
     needs the state before each token), du as per-chunk partial sums, and the prefix sums of r*dr
     that dw needs.
  4. `_bwd_dkdv_kernel`: the reverse sweep: dk, dv (they need the state gradient after each token),
     and dw from the suffix-sum identity, written in w's dtype. In-block terms of dr and dk by levels
     as in the forward; dv's from the forward's stored in-block scores.
"""
import torch
import triton
import triton.language as tl

from .chunk_common import (LOG2E, _chunk_exponents, _chunk_ids, _level_operands, _level_pairs,
                           _load_block, _load_cols, _load_state, _mm, _seq_bounds, _state_ptrs,
                           _store_block, _to_end)
from .launch import launch_opts, scan_block_v, split_flags, sub_block_levels
from .utils import new_buffer, segment_sum_precision


@triton.jit
def _dr_level(dA, r, k, w_l, G: tl.constexpr, BS: tl.constexpr, PREC: tl.constexpr,
              XPREC: tl.constexpr, SPLIT: tl.constexpr):
    q, kk, e = _level_operands(r, k, w_l, G, BS, XPREC, SPLIT)
    dA_g = tl.where(_level_pairs(G, BS), dA, 0.)
    return e * _mm(dA_g, kk, False, G == 1, SPLIT, PREC)


@triton.jit
def _intra_dr(r, k, v, do, w_l, BS: tl.constexpr, LEVELS: tl.constexpr, PREC: tl.constexpr,
              XPREC: tl.constexpr, SPLIT: tl.constexpr):
    """In-block part of dr: dr[t] = sum_{s<t} (do_t . v_s) k_s 2^(gb_t - g_s), by levels."""
    t = tl.arange(0, BS)[:, None]
    s = tl.arange(0, BS)[None, :]
    dA = tl.where(s < t, _mm(do, tl.trans(v), True, True, SPLIT, PREC), 0.)
    dr = tl.zeros(r.shape, dtype=tl.float32)
    for lvl in tl.static_range(LEVELS):
        dr += _dr_level(dA, r, k, w_l, BS // (2 << lvl), BS, PREC, XPREC, SPLIT)
    return dr


@triton.jit
def _dk_level(dA, r, k, w_l, G: tl.constexpr, BS: tl.constexpr, PREC: tl.constexpr,
              XPREC: tl.constexpr, SPLIT: tl.constexpr):
    q, kk, e = _level_operands(r, k, w_l, G, BS, XPREC, SPLIT)
    return e * _mm(tl.trans(tl.where(_level_pairs(G, BS), dA, 0.)), q, False, G == 1, SPLIT, PREC)


@triton.jit
def _intra_dkdv(r, k, v, do, w_l, A, BS: tl.constexpr, LEVELS: tl.constexpr, PREC: tl.constexpr,
                XPREC: tl.constexpr, SPLIT: tl.constexpr):
    """In-block parts of dk (by levels) and dv (from the forward's in-block scores A):
        dk[s] = sum_{t>s} (do_t . v_s) r_t 2^(gb_t - g_s),   dv[s] = sum_{t>s} A[t, s] do_t."""
    t = tl.arange(0, BS)[:, None]
    s = tl.arange(0, BS)[None, :]
    dA = tl.where(s < t, _mm(do, tl.trans(v), True, True, SPLIT, PREC), 0.)
    dk = tl.zeros(k.shape, dtype=tl.float32)
    for lvl in tl.static_range(LEVELS):
        dk += _dk_level(dA, r, k, w_l, BS // (2 << lvl), BS, PREC, XPREC, SPLIT)
    dv = _mm(tl.trans(A), do, False, True, SPLIT, PREC)
    return dk, dv


@triton.jit
def _bwd_state_kernel(r, w, do, dht, dh0, dstates, cu_seqlens, chunk_offsets, T, s_w,
                      H: tl.constexpr, N: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr,
                      HAS_DHT: tl.constexpr, STORE_DH0: tl.constexpr, IS_VARLEN: tl.constexpr,
                      PREC: tl.constexpr, SPLIT: tl.constexpr):
    """Grid (N // BV, num_seqs * H). dstates[chunk, h] = gradient of the state after the chunk; dh0."""
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos, boc = _seq_bounds(i_n, cu_seqlens, chunk_offsets, T, BT, IS_VARLEN)
    L = eos - bos
    s_x = H * N
    r_ptr = r + bos * s_x + i_h * N
    do_ptr = do + bos * s_x + i_h * N
    w_ptr = w + bos * s_w + i_h * N
    if HAS_DHT:
        dS = tl.load(_state_ptrs(dht + i_nh.to(tl.int64) * N * N, i_v * BV, N, BV))
    else:
        dS = tl.zeros([N, BV], dtype=tl.float32)
    NT = tl.cdiv(L, BT)
    for i in range(0, NT):
        c = NT - 1 - i
        tl.store(_state_ptrs(dstates + ((boc + c) * H + i_h) * N * N, i_v * BV, N, BV), dS)
        r_b = _load_block(r_ptr, c * BT, L, s_x, BT, N)
        do_b = _load_cols(do_ptr, c * BT, L, s_x, i_v * BV, BT, BV)
        w_b = _load_block(w_ptr, c * BT, L, s_w, BT, N) * LOG2E
        g = tl.cumsum(w_b, axis=0)
        g_last = tl.sum(w_b, axis=0)
        r_d = r_b * tl.exp2(g - w_b)
        dS = dS * tl.exp2(g_last)[:, None] + _mm(tl.trans(r_d), do_b, False, True, SPLIT, PREC)
    if STORE_DH0:
        tl.store(_state_ptrs(dh0 + i_nh.to(tl.int64) * N * N, i_v * BV, N, BV), dS)


@triton.jit
def _bwd_whole_kernel(r, k, v, w, u, do, states, dstates, flags, dr, dk, dv, dw, du_part,
                      cu_seqlens, chunk_offsets, chunk_indices, T, s_w,
                      H: tl.constexpr, N: tl.constexpr, BT: tl.constexpr, IS_VARLEN: tl.constexpr,
                      PREC: tl.constexpr, SPLIT: tl.constexpr, SPLIT_DR: tl.constexpr,
                      SPLIT_DK: tl.constexpr, SPLIT_DV: tl.constexpr):
    """Grid as `_fwd_out_kernel`: every gradient of one chunk the forward did not flag, in whole-chunk
    products with the factored in-chunk decays (`_chunk_exponents`; dA = do v^T masked):
        dr = 2^gb * (do S^T) + 2^a * (dA (k 2^b)),      dk = 2^(to end) * (v dS^T) + 2^b * (dA^T (r 2^a)),
        dv = A^T do + (k 2^(to end)) dS,                dw from the chunk-local identity (README),
    plus the bonus terms, du per chunk. S: state before the chunk, dS: gradient of the state after it.
    SPLIT_DR, SPLIT_DK, SPLIT_DV: split products for the dots against S or dS (`launch.split_state`)."""
    i_h, c, bos, L, gc = _chunk_ids(cu_seqlens, chunk_offsets, chunk_indices, T, H, BT, IS_VARLEN)
    if tl.load(flags + gc * H + i_h) != 0:
        return
    t0 = c * BT
    s_x = H * N
    off = bos * s_x + i_h * N
    # each gradient is stored as soon as it is complete, to keep few [BT, N] tiles live at once
    w_r = _load_block(w + bos * s_w + i_h * N, t0, L, s_w, BT, N)
    if not SPLIT:
        w_r = w_r * LOG2E
    a, b, g_lo, g_hi = _chunk_exponents(w_r, BT, SPLIT, PREC, False)
    r_b = _load_block(r + off, t0, L, s_x, BT, N)
    k_b = _load_block(k + off, t0, L, s_x, BT, N)
    v_b = _load_block(v + off, t0, L, s_x, BT, N)
    do_b = _load_block(do + off, t0, L, s_x, BT, N)
    u_h = tl.load(u + i_h * N + tl.arange(0, N)).to(tl.float32)
    vdo = tl.sum(v_b * do_b, axis=1)[:, None]
    tl.store(du_part + (gc * H + i_h) * N + tl.arange(0, N), tl.sum(r_b * k_b * vdo, axis=0))
    e_a = tl.exp2(a)
    e_b = tl.exp2(b)
    q = r_b * e_a
    kf = k_b * e_b
    e_lo = tl.exp2(g_lo)
    e_hi = tl.exp2(g_hi)
    k_end = kf * e_hi[None, :]    # k 2^(g_last - g): decayed to the chunk end
    # Q_end = sum_j S_end * dS for dw, with S the state before the chunk and S_end the one after,
    # dS the gradient of S_end
    S = _load_state(states + (gc * H + i_h) * N * N, N)
    dS = _load_state(dstates + (gc * H + i_h) * N * N, N)
    S_end = S * (e_lo * e_hi)[:, None] + _mm(tl.trans(k_end), v_b, False, True, SPLIT, PREC)
    q_end = tl.sum(S_end * dS, axis=1)
    causal = tl.arange(0, BT)[None, :] < tl.arange(0, BT)[:, None]
    dA = tl.where(causal, _mm(do_b, tl.trans(v_b), True, True, SPLIT, PREC), 0.)
    # dv
    A = tl.where(causal, _mm(q, tl.trans(kf), False, False, SPLIT, PREC), 0.)
    dv_b = _mm(tl.trans(A), do_b, False, True, SPLIT, PREC)
    dv_b += _mm(k_end, dS, False, False, SPLIT_DV, PREC)
    dv_b += tl.sum(r_b * u_h[None, :] * k_b, axis=1)[:, None] * do_b
    _store_block(dv + off, dv_b, t0, L, s_x, BT, N)
    # dk; k*dk (without the bonus) for dw
    dk_b = e_b * (_mm(tl.trans(dA), q, False, False, SPLIT, PREC)
                  + e_hi[None, :] * _mm(v_b, tl.trans(dS), True, False, SPLIT_DK, PREC))
    kdk = k_b * dk_b
    _store_block(dk + off, dk_b + u_h[None, :] * r_b * vdo, t0, L, s_x, BT, N)
    # dr; r*dr (without the bonus) for dw
    dr_b = e_a * (_mm(dA, kf, False, False, SPLIT, PREC)
                  + e_lo[None, :] * _mm(do_b, tl.trans(S), True, False, SPLIT_DR, PREC))
    rdr = r_b * dr_b
    _store_block(dr + off, dr_b + u_h[None, :] * k_b * vdo, t0, L, s_x, BT, N)
    # dw[s] = Q_end + sum_{t>s} r*dr - sum_{m>=s} k*dk, one suffix scan
    x = rdr - kdk
    dw_b = q_end[None, :] + tl.cumsum(x, axis=0, reverse=True) - rdr
    _store_block(dw + off, dw_b, t0, L, s_x, BT, N)


@triton.jit
def _bwd_dr_kernel(r, k, v, w, u, do, states, dstates, flags, dr, dwbuf, carry, du_part,
                   cu_seqlens, chunk_offsets, chunk_indices, T, s_w,
                   H: tl.constexpr, N: tl.constexpr, BT: tl.constexpr, BS: tl.constexpr,
                   LEVELS: tl.constexpr, IS_VARLEN: tl.constexpr, PREC: tl.constexpr,
                   XPREC: tl.constexpr, SPLIT: tl.constexpr, SPLIT_S: tl.constexpr):
    """Grid as `_fwd_out_kernel`: the forward sweep over one chunk (dr needs the state before each
    token). Writes dr, dwbuf = -(inclusive in-chunk prefix of r*dr), du per chunk, and
    carry = Q_end + sum_chunk(r*dr) (Q_end = sum_j S_end * dS_end) for `_bwd_dkdv_kernel`.
    Flagged chunks only (the others take `_bwd_whole_kernel`)."""
    i_h, c, bos, L, gc = _chunk_ids(cu_seqlens, chunk_offsets, chunk_indices, T, H, BT, IS_VARLEN)
    if tl.load(flags + gc * H + i_h) == 0:
        return
    s_x = H * N
    off = bos * s_x + i_h * N
    w_ptr = w + bos * s_w + i_h * N
    u_h = tl.load(u + i_h * N + tl.arange(0, N)).to(tl.float32)
    S = _load_state(states + (gc * H + i_h) * N * N, N)
    R_run = tl.zeros([N], dtype=tl.float32)
    du_acc = tl.zeros([N], dtype=tl.float32)
    for s in tl.static_range(BT // BS):
        t0 = c * BT + s * BS
        r_b = _load_block(r + off, t0, L, s_x, BS, N)
        k_b = _load_block(k + off, t0, L, s_x, BS, N)
        v_b = _load_block(v + off, t0, L, s_x, BS, N)
        do_b = _load_block(do + off, t0, L, s_x, BS, N)
        w_r = _load_block(w_ptr, t0, L, s_w, BS, N)
        w_b = w_r * LOG2E
        gb = tl.cumsum(w_b, axis=0) - w_b
        dr_b = tl.exp2(gb) * _mm(do_b, tl.trans(S), True, False, SPLIT_S, PREC)
        dr_b += _intra_dr(r_b, k_b, v_b, do_b, w_r if SPLIT else w_b, BS, LEVELS, PREC, XPREC, SPLIT)
        rdr = r_b * dr_b
        _store_block(dwbuf + off, -(R_run[None, :] + tl.cumsum(rdr, axis=0)), t0, L, s_x, BS, N)
        R_run += tl.sum(rdr, axis=0)
        vdo = tl.sum(v_b * do_b, axis=1)
        dr_b += u_h[None, :] * k_b * vdo[:, None]
        _store_block(dr + off, dr_b, t0, L, s_x, BS, N)
        du_acc += tl.sum(r_b * k_b * vdo[:, None], axis=0)
        g_last = tl.sum(w_b, axis=0)
        k_d = k_b * tl.exp2(_to_end(w_b))
        S = S * tl.exp2(g_last)[:, None] + _mm(tl.trans(k_d), v_b, False, True, SPLIT, PREC)
    dS_end = _load_state(dstates + (gc * H + i_h) * N * N, N)
    cols = tl.arange(0, N)
    tl.store(carry + (gc * H + i_h) * N + cols, tl.sum(S * dS_end, axis=1) + R_run)
    tl.store(du_part + (gc * H + i_h) * N + cols, du_acc)


@triton.jit
def _bwd_dkdv_kernel(r, k, v, w, u, do, dstates, scores, flags, dk, dv, dwbuf, dw, carry,
                     cu_seqlens, chunk_offsets, chunk_indices, T, s_w,
                     H: tl.constexpr, N: tl.constexpr, BT: tl.constexpr, BS: tl.constexpr,
                     LEVELS: tl.constexpr, IS_VARLEN: tl.constexpr, PREC: tl.constexpr,
                     XPREC: tl.constexpr, SPLIT: tl.constexpr, SPLIT_S: tl.constexpr,
                     SPLIT_SV: tl.constexpr):
    """Grid as `_fwd_out_kernel`: the reverse sweep over one chunk (dk, dv need the state gradient
    after each token). dw[s] = carry + dwbuf[s] - sum_{m>=s, in chunk} k*dk, written in dw's dtype
    (dw may alias dwbuf: each element is read, then written, by the same thread).
    SPLIT_S, SPLIT_SV: split products (`_mm`) for the state-gradient dots of dk, of dv.
    Flagged chunks only."""
    i_h, c, bos, L, gc = _chunk_ids(cu_seqlens, chunk_offsets, chunk_indices, T, H, BT, IS_VARLEN)
    if tl.load(flags + gc * H + i_h) == 0:
        return
    NS: tl.constexpr = BT // BS
    s_x = H * N
    off = bos * s_x + i_h * N
    w_ptr = w + bos * s_w + i_h * N
    cols = tl.arange(0, N)
    u_h = tl.load(u + i_h * N + cols).to(tl.float32)
    c_h = tl.load(carry + (gc * H + i_h) * N + cols)
    dS = _load_state(dstates + (gc * H + i_h) * N * N, N)
    K_run = tl.zeros([N], dtype=tl.float32)
    for s in tl.static_range(NS):
        t0 = c * BT + (NS - 1 - s) * BS
        r_b = _load_block(r + off, t0, L, s_x, BS, N)
        k_b = _load_block(k + off, t0, L, s_x, BS, N)
        v_b = _load_block(v + off, t0, L, s_x, BS, N)
        do_b = _load_block(do + off, t0, L, s_x, BS, N)
        w_r = _load_block(w_ptr, t0, L, s_w, BS, N)
        w_b = w_r * LOG2E
        A = _load_block(scores + bos * H * BS + i_h * BS, t0, L, H * BS, BS, BS)
        dk_b, dv_b = _intra_dkdv(r_b, k_b, v_b, do_b, w_r if SPLIT else w_b, A, BS, LEVELS, PREC,
                                 XPREC, SPLIT)
        to_end = tl.exp2(_to_end(w_b))
        dk_b += to_end * _mm(v_b, tl.trans(dS), True, False, SPLIT_S, PREC)
        dv_b += _mm(k_b * to_end, dS, False, False, SPLIT_SV, PREC)
        kdk = k_b * dk_b
        k_suffix = K_run[None, :] + tl.sum(kdk, axis=0)[None, :] - tl.cumsum(kdk, axis=0) + kdk
        K_run += tl.sum(kdk, axis=0)
        dw_b = _load_block(dwbuf + off, t0, L, s_x, BS, N) + c_h[None, :] - k_suffix
        _store_block(dw + off, dw_b, t0, L, s_x, BS, N)
        vdo = tl.sum(v_b * do_b, axis=1)
        dk_b += u_h[None, :] * r_b * vdo[:, None]
        dv_b += tl.sum(r_b * u_h[None, :] * k_b, axis=1)[:, None] * do_b
        _store_block(dk + off, dk_b, t0, L, s_x, BS, N)
        _store_block(dv + off, dv_b, t0, L, s_x, BS, N)
        if s < NS - 1:
            gb = tl.cumsum(w_b, axis=0) - w_b
            g_last = tl.sum(w_b, axis=0)
            r_d = r_b * tl.exp2(gb)
            dS = dS * tl.exp2(g_last)[:, None] + _mm(tl.trans(r_d), do_b, False, True, SPLIT, PREC)


def chunk_wkv_bwd(r, k, v, w, u, states, flags, scores, do, dht, need_dh0, lay, prec, poison=False,
                  split=False):
    """Returns dr, dk, dv (input dtypes), dw (w's shape and dtype), du [H, N], dh0 or None.
    flags, scores: the forward's chunk flags and in-block scores (`chunk_wkv_fwd(..., store_scores=True)`);
    lay: the forward's `_Layout` (its launch settings included)."""
    if scores is None:
        raise ValueError("chunk_wkv_bwd needs the forward's in-block scores: "
                         "call chunk_wkv_fwd(..., store_scores=True)")
    H, N, BT, launch = lay.H, lay.N, lay.BT, lay.launch
    split = split and do.dtype == torch.bfloat16
    sp, sp_dr = split_flags(launch, split, "bwd_dr")
    sp_dk, sp_dv = split_flags(launch, split, "bwd_dk")[1], split_flags(launch, split, "bwd_dv")[1]
    dstates = new_buffer((lay.num_chunks, H, N, N), torch.float32, r.device, poison)
    dh0 = new_buffer((lay.num_seqs, H, N, N), torch.float32, r.device, poison) if need_dh0 else None
    BV = scan_block_v(launch, N, lay.num_seqs * H)
    _bwd_state_kernel[(N // BV, lay.num_seqs * H)](
        r, w, do, dht, dh0, dstates, lay.cu_seqlens, lay.chunk_offsets, lay.T, lay.s_w,
        H=H, N=N, BT=BT, BV=BV, HAS_DHT=dht is not None, STORE_DH0=need_dh0, IS_VARLEN=lay.varlen,
        PREC=prec, SPLIT=sp, **launch_opts(launch, N, "bwd_state"))
    dr = new_buffer(r.shape, r.dtype, r.device, poison)
    dk = new_buffer(k.shape, k.dtype, k.device, poison)
    dv = new_buffer(v.shape, v.dtype, v.device, poison)
    dwbuf = new_buffer(r.shape, torch.float32, r.device, poison)
    # Finch: dw straight in w's dtype; Eagle: per-token fp32 terms, summed over tokens below
    dw = dwbuf if lay.static_w else new_buffer(r.shape, w.dtype, r.device, poison)
    du_part = new_buffer((lay.num_chunks, H, N), torch.float32, r.device, poison)
    grid_args = (lay.cu_seqlens, lay.chunk_offsets, lay.chunk_indices, lay.T, lay.s_w)
    if lay.whole:
        _bwd_whole_kernel[lay.out_grid](
            r, k, v, w, u, do, states, dstates, flags, dr, dk, dv, dw, du_part, *grid_args,
            H=H, N=N, BT=BT, IS_VARLEN=lay.varlen, PREC=prec, SPLIT=sp, SPLIT_DR=sp_dr, SPLIT_DK=sp_dk,
            SPLIT_DV=sp_dv, **launch_opts(launch, N, "bwd_whole"))
    BS = scores.shape[-1]   # the forward's sub-block size
    common = dict(H=H, N=N, BT=BT, BS=BS, LEVELS=sub_block_levels(BS), IS_VARLEN=lay.varlen, PREC=prec,
                  XPREC=segment_sum_precision(), SPLIT=sp)
    carry = new_buffer((lay.num_chunks, H, N), torch.float32, r.device, poison)
    _bwd_dr_kernel[lay.out_grid](
        r, k, v, w, u, do, states, dstates, flags, dr, dwbuf, carry, du_part, *grid_args,
        SPLIT_S=sp_dr, **launch_opts(launch, N, "bwd_dr"), **common)
    _bwd_dkdv_kernel[lay.out_grid](
        r, k, v, w, u, do, dstates, scores, flags, dk, dv, dwbuf, dw, carry, *grid_args,
        SPLIT_S=sp_dk, SPLIT_SV=sp_dv, **launch_opts(launch, N, "bwd_dkdv"), **common)
    if lay.static_w:
        dw = dw.sum(dim=(0, 1)).to(w.dtype)
    return dr, dk, dv, dw, du_part.sum(0).to(u.dtype), dh0

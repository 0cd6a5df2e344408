"""Chunked WKV in Triton: forward and backward for training and prefill (Finch and Eagle).

Layering (as in flash-linear-attention): Triton kernels -> host functions `chunk_wkv_fwd` /
`chunk_wkv_bwd` -> `ChunkWKVFunction` (autograd) -> public `chunk_wkv`.

Algorithm (derivations in kernels/README.md, "Chunked Triton kernels"). Each (chunk, head) takes one
of two paths, chosen on the GPU by `_fwd_whole_kernel` and recorded in per-chunk flags: the whole-chunk
factored form (one reference row for the chunk, every product M = BT) while the chunk's half-chunk
decay is bounded (LAUNCH["max_span"]; < 0 turns it off; fp16 inputs, whose plain tf32 products are
not accurate enough for it, never take it), else the sub-block level kernels, exact for any decay.
  forward   1. `_fwd_state_kernel`: one program per (sequence, head, value slice) scans the chunks of
               BT tokens and stores the state at the start of every chunk (fp32) and the final state.
           1b. `_fwd_whole_kernel`: one program per (chunk, head): the chunk's span; if bounded, its
               output from the chunk-start state and the factored in-chunk scores; else the flag.
               Its sums of log decays are 0/+-1-matrix products (`_row_sums`), not scans.
            2. `_fwd_out_kernel` (flagged chunks): one program per (chunk, head) starts from the
               stored chunk state and walks the chunk in sub-blocks of BS tokens (16; LAUNCH["sub"]):
               inter-block part by `tl.dot` against the running state; in-block part by levels
               (`_intra_scores`): the pairs s < t are split by the highest differing index bit
               G = BS/2, ..., 2, 1, and each level is one masked tensor-core product of r and k
               decayed to a reference row between s and t (every exponent <= 0). When a backward
               will run, it also stores these in-block scores (BS fp32 per token and head) for dv.
  backward  3. `_bwd_state_kernel`: reverse scan of the state gradient; stores the gradient at the end
               of every chunk, and dh0.
           3b. `_bwd_whole_kernel` (unflagged chunks): dr, dk, dv, dw and du of a chunk at once.
               Steps 4 and 5 run on the flagged chunks only.
            4. `_bwd_dr_kernel`: one program per (chunk, head), a forward sweep over the sub-blocks:
               dr (it needs the state before each token), du as per-chunk partial sums, and the
               prefix sums of r*dr that dw needs.
            5. `_bwd_dkdv_kernel`: the reverse sweep: dk, dv (they need the state gradient after each
               token), and dw from the suffix-sum identity, written in w's dtype.
               In-block terms of dr and dk by levels as in the forward; dv's from the stored scores.

Dot products (`_mm`): fp32 operands at `dot_precision` (tf32 for bf16/fp16 inputs), except for bf16
inputs at the default precision (LAUNCH["split"] = 1): bf16 tensor-core products. Raw r, k, v, w, do
go in as they are (bf16-exact), and each decayed/accumulated fp32 operand as a bf16 hi + lo pair:
2 products against an exact operand, 3 when neither is exact. Every product is then fp32-like
(~2^-16, where tf32 gives ~2^-11), at about the MMA cost of one tf32 product (bf16 MMAs run at twice
the tf32 rate). With tf32 products the level backward's bf16 dw error was 2.49e-3; split, every bf16
output sits at its rounding floor (dw 1.66e-3; BENCHMARKS.md runs 8-9).

Tokens are addressed as a flat [B*T, H, N] array of rows: sequence n holds rows [bos, eos), from
`cu_seqlens` (packed, B=1) or bos = n*T. Decays are handled in log2 units (w * log2 e) so that the
kernels use exp2. All arithmetic is fp32; the dot operands are fp32 too (precision: see utils),
or bf16 pairs with LAUNCH["split"] (above).
"""
import torch
import triton
import triton.language as tl

from .utils import dot_precision as _dot_precision, interpreting, new_buffer

LOG2E = tl.constexpr(1.4426950408889634)
SUB = 16  # the smallest sub-block BS: the smallest tl.dot tile (LAUNCH["sub"] may choose a larger one)


# ---------------------------------------------------------------------------------------------
# device helpers
# ---------------------------------------------------------------------------------------------

@triton.jit
def _seq_bounds(i_n, cu_seqlens, chunk_offsets, T, BT: tl.constexpr, IS_VARLEN: tl.constexpr):
    """First row, end row and first global chunk index of sequence i_n."""
    if IS_VARLEN:
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
        boc = tl.load(chunk_offsets + i_n).to(tl.int64)
    else:
        bos = i_n.to(tl.int64) * T
        eos = bos + T
        boc = i_n.to(tl.int64) * tl.cdiv(T, BT)
    return bos, eos, boc


@triton.jit
def _chunk_ids(cu_seqlens, chunk_offsets, chunk_indices, T, H: tl.constexpr, BT: tl.constexpr,
               IS_VARLEN: tl.constexpr):
    """Decode the (chunk, head) program ids: sequence, head, local chunk, bounds, global chunk."""
    i_c, i_nh = tl.program_id(0), tl.program_id(1)
    if IS_VARLEN:
        i_h = i_nh
        i_n = tl.load(chunk_indices + 2 * i_c)
        c = tl.load(chunk_indices + 2 * i_c + 1).to(tl.int64)
    else:
        i_n = i_nh // H
        i_h = i_nh % H
        c = i_c.to(tl.int64)
    bos, eos, boc = _seq_bounds(i_n, cu_seqlens, chunk_offsets, T, BT, IS_VARLEN)
    return i_h, c, bos, eos - bos, boc + c


@triton.jit
def _load_block(ptr, row0, L, stride, BR: tl.constexpr, N: tl.constexpr):
    """Rows [row0, row0 + BR) of a [rows, N] view as fp32 [BR, N]; rows >= L read as 0."""
    rows = row0 + tl.arange(0, BR)
    cols = tl.arange(0, N)
    x = tl.load(ptr + rows[:, None] * stride + cols[None, :], mask=(rows < L)[:, None], other=0.)
    return x.to(tl.float32)


@triton.jit
def _store_block(ptr, x, row0, L, stride, BR: tl.constexpr, N: tl.constexpr):
    rows = row0 + tl.arange(0, BR)
    cols = tl.arange(0, N)
    tl.store(ptr + rows[:, None] * stride + cols[None, :], x.to(ptr.dtype.element_ty),
             mask=(rows < L)[:, None])


@triton.jit
def _load_cols(ptr, row0, L, stride, col0, BR: tl.constexpr, BC: tl.constexpr):
    """Rows [row0, row0 + BR), columns [col0, col0 + BC) as fp32 [BR, BC]; rows >= L read as 0."""
    rows = row0 + tl.arange(0, BR)
    cols = col0 + tl.arange(0, BC)
    x = tl.load(ptr + rows[:, None] * stride + cols[None, :], mask=(rows < L)[:, None], other=0.)
    return x.to(tl.float32)


@triton.jit
def _state_ptrs(ptr, col0, N: tl.constexpr, BV: tl.constexpr):
    """Pointers to the [N, BV] column slice of an [N, N] fp32 state."""
    return ptr + tl.arange(0, N)[:, None] * N + col0 + tl.arange(0, BV)[None, :]


@triton.jit
def _load_state(ptr, N: tl.constexpr):
    cols = tl.arange(0, N)
    return tl.load(ptr + cols[:, None] * N + cols[None, :])


@triton.jit
def _store_state(ptr, S, N: tl.constexpr):
    cols = tl.arange(0, N)
    tl.store(ptr + cols[:, None] * N + cols[None, :], S)


@triton.jit
def _to_end(w):
    """Exclusive suffix sum of w along rows (log2 decay from after row t to the block end), summed
    directly rather than as g_last - g: same-sign terms keep its relative error small for strong decays."""
    return tl.cumsum(w, axis=0, reverse=True) - w


@triton.jit
def _level_pairs(G: tl.constexpr, BS: tl.constexpr):
    """[BS, BS] mask of the pairs (t, s), s < t, whose highest differing index bit is G: t in the
    upper and s in the lower G-row half of one 2G-row group. The levels G = BS/2, ..., 1 partition
    all pairs s < t of the block."""
    t = tl.arange(0, BS)[:, None]
    s = tl.arange(0, BS)[None, :]
    return ((t // (2 * G)) == (s // (2 * G))) & ((t // G) % 2 == 1) & ((s // G) % 2 == 0)


@triton.jit
def _split_bf16(x):
    """fp32 x as a bf16 pair hi + lo with x - (hi + lo) ~ 2^-17 |x| (16 significant bits)."""
    hi = x.to(tl.bfloat16)
    return hi, (x - hi.to(tl.float32)).to(tl.bfloat16)


@triton.jit
def _bdot(a, b, acc, SPLIT: tl.constexpr):
    """tl.dot of bf16 operands with fp32 accumulation. SPLIT = 2 (CPU interpreter, whose tl.dot
    multiplies the raw bits of bf16 operands) emulates it: the bf16 values, widened, in an fp32 dot."""
    if SPLIT == 2:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        out = tl.dot(a, b, acc)
    return out


@triton.jit
def _mm(a, b, A_EXACT: tl.constexpr, B_EXACT: tl.constexpr, SPLIT: tl.constexpr, PREC: tl.constexpr):
    """fp32 a @ b. SPLIT = 0: one tl.dot at PREC (tf32 keeps 10 mantissa bits of fp32 operands).
    SPLIT = 1 (2 in the interpreter, see `_bdot`): bf16 tensor-core products, fp32 accumulation.
    An operand flagged exact (its fp32 value is a bf16 value: raw bf16 r, k, v, w, do) goes in as
    is; any other is split into a bf16 hi + lo pair: 1 product if both are exact, 2 if one is
    (exact times a 16-bit operand), 3 if neither (hi*hi + hi*lo + lo*hi, dropping lo*lo ~ 2^-18).
    Every case is fp32-like (~2^-16 relative per product term), unlike tf32 (~2^-11)."""
    if SPLIT:
        if A_EXACT:
            a_h = a.to(tl.bfloat16)
            if B_EXACT:
                out = _bdot(a_h, b.to(tl.bfloat16), None, SPLIT)
            else:
                b_h, b_l = _split_bf16(b)
                out = _bdot(a_h, b_l, None, SPLIT)
                out = _bdot(a_h, b_h, out, SPLIT)
        else:
            a_h, a_l = _split_bf16(a)
            if B_EXACT:
                b_h = b.to(tl.bfloat16)
                out = _bdot(a_l, b_h, None, SPLIT)
                out = _bdot(a_h, b_h, out, SPLIT)
            else:
                b_h, b_l = _split_bf16(b)
                out = _bdot(a_l, b_h, None, SPLIT)
                out = _bdot(a_h, b_l, out, SPLIT)
                out = _bdot(a_h, b_h, out, SPLIT)
    else:
        out = tl.dot(a, b, input_precision=PREC)
    return out


@triton.jit
def _level_decay(w_l, G: tl.constexpr, BS: tl.constexpr, XPREC: tl.constexpr, SPLIT: tl.constexpr):
    """2^X for level G. Each G-row half is a segment; X[t] sums w over the rows of t's segment
    before t in upper halves, after t in lower halves. For a level-G pair (t, s) the reference row
    is the end of s's half, so 2^(gb_t - g_s) = 2^X[t] * 2^X[s], both <= 1.
    The segment sums run as a 0/1-matrix product: SPLIT = 0: w_l holds log2 decays, product in tf32x3
    (fp32-accurate: 1 is exact in tf32); SPLIT = 1: w_l holds the raw bf16-exact natural-log decays,
    one bf16 product (exact products, fp32 sums), scaled to log2 after the sum."""
    t = tl.arange(0, BS)[:, None]
    m = tl.arange(0, BS)[None, :]
    upper = (t // G) % 2 == 1
    lower = (t // G) % 2 == 0
    sel = ((t // G) == (m // G)) & ((upper & (m < t)) | (lower & (m > t)))
    if SPLIT:
        X = _bdot(tl.where(sel, 1.0, 0.0).to(tl.bfloat16), w_l.to(tl.bfloat16), None, SPLIT) * LOG2E
    else:
        X = tl.dot(tl.where(sel, 1.0, 0.0), w_l, input_precision=XPREC)
    return tl.exp2(X)


@triton.jit
def _level_operands(r, k, w_l, G: tl.constexpr, BS: tl.constexpr, XPREC: tl.constexpr,
                    SPLIT: tl.constexpr):
    """r and k decayed to the level-G reference rows, and the decay 2^X itself (None-free: 1 for G=1,
    adjacent rows, where nothing decays in between)."""
    if G > 1:
        e = _level_decay(w_l, G, BS, XPREC, SPLIT)
    else:
        e = tl.full(r.shape, 1.0, tl.float32)
    return r * e, k * e, e


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
def _row_sums(sel, w_r, SPLIT: tl.constexpr, PREC: tl.constexpr):
    """sel @ w in log2 units, sel a [BT, BT] matrix of 0 and +-1 (exact in bf16 and tf32): sums of
    log decays over chosen rows as one tensor-core product instead of a `tl.cumsum`, whose scan
    across warps costs more instructions than the whole product. SPLIT: w_r holds the raw
    bf16-exact natural-log decays: one bf16 product (exact products, fp32 sums), scaled to log2
    after the sum; else w_r in log2 units, product at PREC (the whole-chunk path runs only at
    fp32-accurate tf32x3 or ieee then, `_max_span`)."""
    if SPLIT:
        out = _bdot(sel.to(tl.bfloat16), w_r.to(tl.bfloat16), None, SPLIT) * LOG2E
    else:
        out = tl.dot(sel, w_r, input_precision=PREC)
    return out


@triton.jit
def _chunk_exponents(w_r, BT: tl.constexpr, SPLIT: tl.constexpr, PREC: tl.constexpr,
                     PRODUCTS: tl.constexpr):
    """Whole-chunk factored form: with R = BT/2 - 1 the reference row, the in-chunk decay of a pair
    s < t is 2^(gb_t - g_s) = 2^a[t] * 2^b[s] with a[t] = gb_t - g_R and b[s] = g_R - g_s. Both are
    direct sums of w over one half of the chunk, except in the bf16 backward (below). Returns a, b
    [BT, N] and the half-chunk sums g_lo = g_R (rows < BT/2) and g_hi (rows >= BT/2) [N], both <= 0:
    every |a|, |b| <= span = -min(g_lo, g_hi), so the factors stay in fp32's range while span is
    bounded (`_fwd_whole_kernel` checks it). The other exponents of the chunk follow without scans:
    2^gb = 2^a * 2^g_lo (to the chunk start) and 2^(g_last - g) = 2^b * 2^g_hi (to its end).
    w_r as for `_row_sums`. PRODUCTS: the sums as 0/+-1-matrix products (the forward: 0.915 ms
    against 1.098 with scans, run 19); else `tl.cumsum` scans (the backward, whose registers the
    product accumulators overfill: 1.5 KB of spills, 5.92 ms against 3.80, run 19): one prefix scan
    for bf16 inputs, two direct half-chunk scans for fp32 inputs."""
    t = tl.arange(0, BT)[:, None]
    H2: tl.constexpr = BT // 2
    upper = t >= H2
    w = w_r * LOG2E if SPLIT else w_r
    g_lo = tl.sum(tl.where(upper, 0., w), axis=0)   # = g_R
    g_hi = tl.sum(tl.where(upper, w, 0.), axis=0)
    if PRODUCTS:
        m = tl.arange(0, BT)[None, :]
        # a: upper rows + sum of w over [BT/2, t), lower rows - sum over [t, BT/2)
        sel_a = tl.where(upper, tl.where((m >= H2) & (m < t), 1.0, 0.0),
                         tl.where((m >= t) & (m < H2), -1.0, 0.0))
        # b: upper rows - sum of w over [BT/2, s], lower rows + sum over (s, BT/2)
        sel_b = tl.where(upper, tl.where((m >= H2) & (m <= t), -1.0, 0.0),
                         tl.where((m > t) & (m < H2), 1.0, 0.0))
        a = _row_sums(sel_a, w_r, SPLIT, PREC)
        b = _row_sums(sel_b, w_r, SPLIT, PREC)
    elif SPLIT:
        # bf16 inputs: one prefix scan g, a = (g - w) - g_R and b = g_R - g. These differences round
        # to ~2^-24 of a whole-chunk sum (<= 2 span) in the exponent: ~1e-5 relative at span 96, far
        # under bf16's 2e-3, and one scan fewer (a tenth of the backward's instructions).
        g = tl.cumsum(w, axis=0)
        a = g - w - g_lo[None, :]
        b = g_lo[None, :] - g
    else:
        # fp32 inputs: direct sums over each half (two scans), fp32-accurate relative to one half
        up = tl.cumsum(tl.where(upper, w, 0.), axis=0)                 # rows >= BT/2: from BT/2 to t
        low = tl.cumsum(tl.where(upper, 0., w), axis=0, reverse=True)  # rows < BT/2: from t to R
        a = tl.where(upper, up - w, -low)
        b = tl.where(upper, -up, low - w)
    return a, b, g_lo, g_hi


# ---------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------

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
    SPLIT_DR, SPLIT_DK, SPLIT_DV: split products for the dots against S or dS (LAUNCH["split_state"])."""
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


# ---------------------------------------------------------------------------------------------
# host functions
# ---------------------------------------------------------------------------------------------

# Launch choices (a plain dict, no environment: bench/wkv.py --variants times alternatives in one
# process, --launch a whole run): num_warps per kernel for N = 64 (2 and 8 warps measured slower for
# these M = 16 tiles); the value-slice width of the scans when num_seqs * H >= 256 (64: each program
# reads k, w (or r, w) once, measured 0.23 ms faster than 32 at the headline shape); for bf16 inputs at
# the default precision, the bf16 split products of `_mm` ("split": in-block and state-update dots) and
# the bit mask "split_state" of the dots against the fp32 state or state gradient (SPLIT_STATE_BITS).
# 7 leaves dv's state-gradient dot in tf32: it costs dv nothing measurable (1.68e-3, floor 1.67e-3),
# while splitting it spills registers and costs 0.4 ms (BENCHMARKS.md, run 9). dk's must stay split
# (dw 1.91e-3 otherwise, against a 2e-3 bound).
# "sub": tokens per sub-block BS (16, 32 or 64; at most the chunk size). 16: M = 16 products on
# mma.sync; 64: the whole chunk at once, every product M = 64 on wgmma and far fewer barriers
# (bench/kernel_resources.py: 37 instead of 141 in _fwd_out_kernel) but 6 levels of [64, 64] products
# and more spills; not yet timed.
# "fwd_whole", "bwd_whole": the whole-chunk kernels, M = 64 products on wgmma; "max_span": their
# bound on a chunk's half-chunk decay (log2 units; `_max_span`; < 0 sends every chunk to the level
# kernels). H100, headline shape, 0.25 % of chunks flagged (BENCHMARKS.md runs 18-19): on the level
# kernels alone fwd 1.643 ms, fwd+bwd 5.920; whole-chunk at 8 + 8 warps 1.457 / 5.244; forward at 4
# warps (2 blocks per SM) 1.098 fwd, and 0.915 with its sums as products; the backward at 4 warps
# spills (7.858 fwd+bwd), so it stays at 8.
# "maxnreg_<kernel>": a register cap (0: none; N = 64 only). 168 lets 3 blocks of 4 warps share an SM
# instead of 2: faster for _fwd_out_kernel and _bwd_dr_kernel despite the spills, slower for
# _bwd_dkdv_kernel (run 13).
LAUNCH = {"fwd_state": 4, "fwd_whole": 4, "fwd_out": 4, "bwd_state": 4, "bwd_whole": 8, "bwd_dr": 4,
          "bwd_dkdv": 4, "scan_bv": 64, "split": 1, "split_state": 7, "sub": 16, "max_span": 96,
          "maxnreg_fwd_state": 0, "maxnreg_fwd_out": 168, "maxnreg_bwd_state": 0, "maxnreg_bwd_dr": 168,
          "maxnreg_bwd_dkdv": 0, "maxnreg_fwd_whole": 0, "maxnreg_bwd_whole": 0}


# LAUNCH["split_state"] is a bit mask over the dots against the fp32 state or state gradient
SPLIT_STATE_BITS = {"fwd_out": 1, "bwd_dr": 2, "bwd_dk": 4, "bwd_dv": 8}


def parse_launch(text):
    """LAUNCH settings written `NAME=VALUE[+NAME=VALUE...]` (or `default`: none) as {NAME: int}, for
    the benchmark scripts' --launch and --variants; an unknown NAME is an error."""
    settings = {} if text in ("", "default") else dict(kv.split("=", 1) for kv in text.split("+"))
    unknown = sorted(set(settings) - set(LAUNCH))
    if unknown:
        raise ValueError(f"unknown LAUNCH settings {unknown} in {text!r}; known: {', '.join(LAUNCH)}")
    return {key: int(val) for key, val in settings.items()}


def _launch_opts(N, kernel):
    """num_warps, and the register cap `maxnreg` where LAUNCH sets one (not in the interpreter)."""
    opts = {"num_warps": LAUNCH[kernel] if N <= 64 else 8}
    if LAUNCH[f"maxnreg_{kernel}"] and N <= 64 and not interpreting():
        opts["maxnreg"] = LAUNCH[f"maxnreg_{kernel}"]
    return opts


def _levels(BS):
    return BS.bit_length() - 1   # log2(BS): the pair levels G = BS/2, ..., 1 of the in-block terms


def _sub_block(BT):
    """Tokens per sub-block: LAUNCH["sub"], at most the chunk size."""
    BS = min(LAUNCH["sub"], BT)
    if BS < SUB or BS & (BS - 1) or BT % BS:
        raise ValueError(f"LAUNCH['sub'] = {LAUNCH['sub']}: need a power of two >= {SUB} that "
                         f"divides the chunk size {BT}")
    return BS


def _scan_block_v(lay):
    """Value-slice width of the sequential scans: narrower slices when few (sequence, head) pairs,
    so that long single sequences still spread over the SMs."""
    return max(16, min(lay.N, 16 if lay.num_seqs * lay.H < 256 else LAUNCH["scan_bv"]))


def prepare_chunks(cu_seqlens, chunk_size, cu_seqlens_cpu=None):
    """Per-sequence first chunk index [num_seqs] and the (sequence, local chunk) table [chunks, 2].

    Uses `cu_seqlens_cpu` when given, else copies cu_seqlens to the host (one sync).
    """
    lens = (cu_seqlens_cpu if cu_seqlens_cpu is not None else cu_seqlens.cpu()).long().diff()
    n_chunks = (lens + chunk_size - 1) // chunk_size
    offsets = torch.cat([n_chunks.new_zeros(1), n_chunks.cumsum(0)[:-1]])
    seq = torch.repeat_interleave(torch.arange(len(lens)), n_chunks)
    local = torch.arange(int(n_chunks.sum())) - torch.repeat_interleave(offsets, n_chunks)
    table = torch.stack([seq, local], dim=1).to(torch.int32)
    dev = cu_seqlens.device
    return offsets.to(torch.int32).to(dev), table.contiguous().to(dev), int(n_chunks.sum())


class _Layout:
    """Shapes and index tables shared by forward and backward."""

    def __init__(self, r, w, cu_seqlens, chunk_size, cu_seqlens_cpu=None, prec="ieee", split=False):
        B, T, H, N = r.shape
        self.B, self.T, self.H, self.N, self.BT = B, T, H, N, chunk_size
        self.static_w = w.dim() == 2
        self.max_span = _max_span(r.dtype, prec, split)
        self.whole = self.max_span >= 0   # False: every chunk takes the level kernels
        self.s_w = 0 if self.static_w else H * N
        self.varlen = cu_seqlens is not None
        if self.varlen:
            self.num_seqs = cu_seqlens.numel() - 1
            self.chunk_offsets, self.chunk_indices, self.num_chunks = prepare_chunks(
                cu_seqlens, chunk_size, cu_seqlens_cpu)
            self.cu_seqlens = cu_seqlens
            self.out_grid = (self.num_chunks, H)
        else:
            self.num_seqs = B
            nt = triton.cdiv(T, chunk_size)
            self.num_chunks = B * nt
            self.chunk_offsets = self.chunk_indices = self.cu_seqlens = None
            self.out_grid = (nt, B * H)


def _xprec():
    """Precision of the 0/1-matrix segment sums of log decays: fp32-accurate everywhere."""
    return "ieee" if interpreting() else "tf32x3"


def _split_flags(split, kernel):
    """(SPLIT, SPLIT_S) of a kernel: bf16 split products only where the caller's inputs are bf16
    (their raw values are then exact bf16 operands) and no dot precision was forced; SPLIT_S where
    LAUNCH["split_state"] has the kernel's bit."""
    on = 2 if interpreting() else 1   # 2: `_bdot` emulates bf16 products in the interpreter
    sp = on if split and LAUNCH["split"] else 0
    return sp, (sp if LAUNCH["split_state"] & SPLIT_STATE_BITS[kernel] else 0)


def _max_span(dtype, prec, split):
    """Largest half-chunk decay (log2 units) `_fwd_whole_kernel` takes in the factored form: its
    factors 2^a, 2^b lie in [2^-span, 2^span], far inside fp32's range (and their bf16 lo parts too)
    for 16-bit inputs; for fp32 inputs a tighter bound keeps the exponents' own rounding (relative to
    span) at fp32 accuracy. Plain tf32 dots (fp16 inputs, or bf16 without split products) round the
    factored operands r 2^a, k 2^b to 11 bits, which the chunk-local dw identity amplifies past
    2e-3 (fp16: 2.04e-3 on the device, run 18): those calls keep every chunk on the level kernels,
    as does LAUNCH["max_span"] < 0."""
    if prec == "tf32" and not _split_flags(split, "fwd_out")[0]:
        return -1.0
    limit = LAUNCH["max_span"]
    return float(limit if dtype in (torch.bfloat16, torch.float16) else min(limit, 16))


def chunk_wkv_fwd(r, k, v, w, u, h0, lay, prec, poison=False, split=False, store_scores=False):
    """Returns o [B, T, H, N] (r's dtype), ht [num_seqs, H, N, N] fp32, chunk states fp32, the
    per-chunk flags [chunks, H] int32 (1: the chunk took the level kernels), and the in-block scores
    [B*T, H, BS] fp32 of the flagged chunks for the backward (None unless store_scores).
    split: r, k, v, w are bf16 and the dot precision is the default (see `_mm`)."""
    H, N, BT = lay.H, lay.N, lay.BT
    sp, sp_s = _split_flags(split, "fwd_out")
    o = new_buffer(r.shape, r.dtype, r.device, poison)
    ht = new_buffer((lay.num_seqs, H, N, N), torch.float32, r.device, poison)
    states = new_buffer((lay.num_chunks, H, N, N), torch.float32, r.device, poison)
    if not lay.whole:
        flags = torch.ones((lay.num_chunks, H), dtype=torch.int32, device=r.device)
    elif poison:
        flags = torch.full((lay.num_chunks, H), -1, dtype=torch.int32, device=r.device)
    else:
        flags = torch.empty((lay.num_chunks, H), dtype=torch.int32, device=r.device)
    BS = _sub_block(BT)
    scores = new_buffer((lay.B * lay.T, H, BS), torch.float32, r.device, poison) if store_scores else None
    BV = _scan_block_v(lay)
    _fwd_state_kernel[(N // BV, lay.num_seqs * H)](
        k, v, w, h0, ht, states, lay.cu_seqlens, lay.chunk_offsets, lay.T, lay.s_w,
        H=H, N=N, BT=BT, BV=BV, HAS_H0=h0 is not None, IS_VARLEN=lay.varlen, PREC=prec, SPLIT=sp,
        **_launch_opts(N, "fwd_state"))
    if lay.whole:
        _fwd_whole_kernel[lay.out_grid](
            r, k, v, w, u, o, states, flags, lay.cu_seqlens, lay.chunk_offsets, lay.chunk_indices,
            lay.T, lay.s_w, H=H, N=N, BT=BT, MAX_SPAN=lay.max_span, IS_VARLEN=lay.varlen, PREC=prec,
            SPLIT=sp, SPLIT_S=sp_s, **_launch_opts(N, "fwd_whole"))
    _fwd_out_kernel[lay.out_grid](
        r, k, v, w, u, o, states, scores, flags, lay.cu_seqlens, lay.chunk_offsets, lay.chunk_indices,
        lay.T, lay.s_w, H=H, N=N, BT=BT, BS=BS, LEVELS=_levels(BS), IS_VARLEN=lay.varlen, PREC=prec,
        XPREC=_xprec(), SPLIT=sp, SPLIT_S=sp_s, STORE_A=store_scores, **_launch_opts(N, "fwd_out"))
    return o, ht, states, flags, scores


def chunk_wkv_bwd(r, k, v, w, u, states, flags, scores, do, dht, need_dh0, lay, prec, poison=False,
                  split=False):
    """Returns dr, dk, dv (input dtypes), dw (w's shape and dtype), du [H, N], dh0 or None.
    flags, scores: the forward's chunk flags and in-block scores (`chunk_wkv_fwd(..., store_scores=True)`)."""
    if scores is None:
        raise ValueError("chunk_wkv_bwd needs the forward's in-block scores: "
                         "call chunk_wkv_fwd(..., store_scores=True)")
    H, N, BT = lay.H, lay.N, lay.BT
    split = split and do.dtype == torch.bfloat16
    sp, sp_dr = _split_flags(split, "bwd_dr")
    sp_dk, sp_dv = _split_flags(split, "bwd_dk")[1], _split_flags(split, "bwd_dv")[1]
    dstates = new_buffer((lay.num_chunks, H, N, N), torch.float32, r.device, poison)
    dh0 = new_buffer((lay.num_seqs, H, N, N), torch.float32, r.device, poison) if need_dh0 else None
    BV = _scan_block_v(lay)
    _bwd_state_kernel[(N // BV, lay.num_seqs * H)](
        r, w, do, dht, dh0, dstates, lay.cu_seqlens, lay.chunk_offsets, lay.T, lay.s_w,
        H=H, N=N, BT=BT, BV=BV, HAS_DHT=dht is not None, STORE_DH0=need_dh0, IS_VARLEN=lay.varlen,
        PREC=prec, SPLIT=sp, **_launch_opts(N, "bwd_state"))
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
            SPLIT_DV=sp_dv, **_launch_opts(N, "bwd_whole"))
    BS = scores.shape[-1]   # the forward's sub-block size
    common = dict(H=H, N=N, BT=BT, BS=BS, LEVELS=_levels(BS), IS_VARLEN=lay.varlen, PREC=prec,
                  XPREC=_xprec(), SPLIT=sp)
    carry = new_buffer((lay.num_chunks, H, N), torch.float32, r.device, poison)
    _bwd_dr_kernel[lay.out_grid](
        r, k, v, w, u, do, states, dstates, flags, dr, dwbuf, carry, du_part, *grid_args,
        SPLIT_S=sp_dr, **_launch_opts(N, "bwd_dr"), **common)
    _bwd_dkdv_kernel[lay.out_grid](
        r, k, v, w, u, do, dstates, scores, flags, dk, dv, dwbuf, dw, carry, *grid_args,
        SPLIT_S=sp_dk, SPLIT_SV=sp_dv, **_launch_opts(N, "bwd_dkdv"), **common)
    if lay.static_w:
        dw = dw.sum(dim=(0, 1)).to(w.dtype)
    return dr, dk, dv, dw, du_part.sum(0).to(u.dtype), dh0


class ChunkWKVFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, r, k, v, w, u, h0, cu_seqlens, chunk_size, cu_seqlens_cpu, prec, poison, split,
                store_scores):
        lay = _Layout(r, w, cu_seqlens, chunk_size, cu_seqlens_cpu, prec, split)
        o, ht, states, flags, scores = chunk_wkv_fwd(r, k, v, w, u, h0, lay, prec, poison, split,
                                                     store_scores)
        ctx.save_for_backward(r, k, v, w, u, states, flags, scores)
        ctx.lay, ctx.prec, ctx.poison, ctx.has_h0 = lay, prec, poison, h0 is not None
        ctx.split = split
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        r, k, v, w, u, states, flags, scores = ctx.saved_tensors
        need_dh0 = ctx.has_h0 and ctx.needs_input_grad[5]
        dr, dk, dv, dw, du, dh0 = chunk_wkv_bwd(
            r, k, v, w, u, states, flags, scores, do.contiguous(), None if dht is None else dht.contiguous(),
            need_dh0, ctx.lay, ctx.prec, ctx.poison, ctx.split)
        return dr, dk, dv, dw, du, dh0, None, None, None, None, None, None, None


def chunk_wkv(r, k, v, w_log, u, initial_state=None, cu_seqlens=None, chunk_size=64,
              cu_seqlens_cpu=None, dot_precision=None, poison=False):
    """Chunked Triton WKV (Finch per-token decay or Eagle static decay), differentiable.

    Args:
        r, k, v: [B, T, H, N] CUDA tensors (bf16/fp16/fp32); N a power of two >= 16.
        w_log: log decay <= 0 (finite): [B, T, H, N] (Finch) or [H, N] (Eagle, never expanded).
        u: [H, N] bonus.
        initial_state: [num_seqs, H, N, N] fp32 (indexed [key, value]) or None; not modified.
        cu_seqlens: packed sequences: int tensor [num_seqs + 1] of row offsets into T, with B = 1.
        chunk_size: tokens per chunk (multiple of 16); 64 on the GPU.
        cu_seqlens_cpu: optional host copy of cu_seqlens (avoids a device sync).
        dot_precision: None (by dtype: see utils.dot_precision), "tf32", "tf32x3" or "ieee".
        poison: fill every kernel-written buffer with NaN first (tests: a missed element shows).

    Returns:
        (out [B, T, H, N] in r's dtype, final_state [num_seqs, H, N, N] fp32).
    """
    B, T, H, N = r.shape
    if cu_seqlens is not None and B != 1:
        raise ValueError(f"chunk_wkv: packed sequences (cu_seqlens) need B = 1, got B = {B}")
    if chunk_size % SUB or N < 16 or N & (N - 1):
        raise ValueError(f"chunk_wkv: need chunk_size % {SUB} == 0 and N a power of two >= 16")
    prec = _dot_precision(r.dtype, dot_precision)
    split = dot_precision is None and all(x.dtype == torch.bfloat16 for x in (r, k, v, w_log))
    r, k, v, u = (x.contiguous() for x in (r, k, v, u))
    w_log = w_log.contiguous() if w_log.dim() == 2 else w_log.expand(B, T, H, N).contiguous()
    h0 = None if initial_state is None else initial_state.float().contiguous()
    # the backward reads the forward's in-block scores: keep them only when a backward can run
    store_scores = torch.is_grad_enabled() and any(
        x is not None and x.requires_grad for x in (r, k, v, w_log, u, h0))
    return ChunkWKVFunction.apply(r, k, v, w_log, u, h0, cu_seqlens, chunk_size, cu_seqlens_cpu,
                                  prec, poison, split, store_scores)

"""Triton device functions shared by the chunked WKV kernels of chunk_fwd.py and chunk_bwd.py: where a
chunk's rows lie, block loads and stores, the dot products (`_mm`: fp32 at a given precision, or bf16
split products), and the decay exponents: by levels inside a sub-block, and in the whole-chunk
factored form (`_chunk_exponents`). kernels/README.md derives them."""
import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)


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
def _row_sums(sel, w_r, SPLIT: tl.constexpr, PREC: tl.constexpr):
    """sel @ w in log2 units, sel a [BT, BT] matrix of 0 and +-1 (exact in bf16 and tf32): sums of
    log decays over chosen rows as one tensor-core product instead of a `tl.cumsum`, whose scan
    across warps costs more instructions than the whole product. SPLIT: w_r holds the raw
    bf16-exact natural-log decays: one bf16 product (exact products, fp32 sums), scaled to log2
    after the sum; else w_r in log2 units, product at PREC (the whole-chunk path runs only at
    fp32-accurate tf32x3 or ieee then, `whole_chunk_max_span`)."""
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
    w_r as for `_row_sums`. PRODUCTS: the sums as 0/+-1-matrix products (the forward: faster than
    scans); else `tl.cumsum` scans (the backward, whose registers the product accumulators would
    overfill): one prefix scan for bf16 inputs, two direct half-chunk scans for fp32 inputs."""
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

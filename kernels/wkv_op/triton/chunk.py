"""Chunked WKV in Triton, differentiable: training and prefill, Finch (per-token decay) and Eagle
(static decay).

Layering (as in flash-linear-attention): Triton kernels (chunk_fwd.py and chunk_bwd.py, their shared
device functions in chunk_common.py) -> host functions `chunk_wkv_fwd` / `chunk_wkv_bwd` ->
`ChunkWKVFunction` (autograd) -> public `chunk_wkv`. The launch settings come in as one `WKVLaunch`
(launch.py) and travel with the call's `_Layout`.

Algorithm (derivations in kernels/README.md, "Chunked Triton kernels"). Each (chunk, head) takes one
of two paths, chosen on the GPU by `_fwd_whole_kernel` and recorded in per-chunk flags: the whole-chunk
factored form (one reference row for the chunk, every product M = BT) while the chunk's half-chunk
decay is bounded (`launch.max_span`; < 0 turns it off; fp16 inputs, whose plain tf32 products are
not accurate enough for it, never take it), else the sub-block level kernels, exact for any decay.
chunk_fwd.py and chunk_bwd.py list the kernels of each pass.

Dot products (`_mm`): fp32 operands at `dot_precision` (tf32 for bf16/fp16 inputs), except for bf16
inputs at the default precision (`launch.split` = 1): bf16 tensor-core products. Raw r, k, v, w, do
go in as they are (bf16-exact), and each decayed/accumulated fp32 operand as a bf16 hi + lo pair:
2 products against an exact operand, 3 when neither is exact. Every product is then fp32-like
(~2^-16, where tf32 gives ~2^-11), at about the MMA cost of one tf32 product (bf16 MMAs run at twice
the tf32 rate), and every bf16 output sits at its rounding floor (with tf32 products the level
backward's bf16 dw does not).

Tokens are addressed as a flat [B*T, H, N] array of rows: sequence n holds rows [bos, eos), from
`cu_seqlens` (packed, B=1) or bos = n*T. Decays are handled in log2 units (w * log2 e) so that the
kernels use exp2. All arithmetic is fp32; the dot operands are fp32 too (precision: see utils),
or bf16 pairs with `launch.split` (above).
"""
import torch
import triton

from ..offsets import host_offsets, to_device
from .chunk_bwd import chunk_wkv_bwd
from .chunk_fwd import chunk_wkv_fwd
from .launch import DEFAULT_LAUNCH, SUB, whole_chunk_max_span
from .utils import dot_precision as _dot_precision


def prepare_chunks(cu_seqlens, chunk_size, cu_seqlens_cpu=None):
    """Per-sequence first chunk index [num_seqs] and the (sequence, local chunk) table [chunks, 2] on
    cu_seqlens' device, and the number of chunks.

    Made once per offsets tensor and chunk size and kept on the tensor (every layer of a packed
    forward gets the same offsets); the tables go to the GPU without a sync. Uses `cu_seqlens_cpu`
    when given, else the host copy of `host_offsets`.
    """
    key = (cu_seqlens._version, chunk_size)
    cached_key, tables = getattr(cu_seqlens, "_chunk_tables", (None, None))
    if cached_key == key:
        return tables
    lens = (cu_seqlens_cpu if cu_seqlens_cpu is not None else host_offsets(cu_seqlens)).long().diff()
    n_chunks = (lens + chunk_size - 1) // chunk_size
    offsets = torch.cat([n_chunks.new_zeros(1), n_chunks.cumsum(0)[:-1]])
    seq = torch.repeat_interleave(torch.arange(len(lens)), n_chunks)
    local = torch.arange(int(n_chunks.sum())) - torch.repeat_interleave(offsets, n_chunks)
    table = torch.stack([seq, local], dim=1).to(torch.int32)
    dev = cu_seqlens.device
    tables = (to_device(offsets, dev, torch.int32), to_device(table.contiguous(), dev), int(n_chunks.sum()))
    cu_seqlens._chunk_tables = (key, tables)
    return tables


class _Layout:
    """Shapes, index tables and launch settings shared by a call's forward and backward."""

    def __init__(self, r, w, cu_seqlens, chunk_size, launch, cu_seqlens_cpu=None, prec="ieee",
                 split=False):
        B, T, H, N = r.shape
        self.B, self.T, self.H, self.N, self.BT = B, T, H, N, chunk_size
        self.launch = launch
        self.static_w = w.dim() == 2
        self.max_span = whole_chunk_max_span(launch, r.dtype, prec, split)
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


class ChunkWKVFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, r, k, v, w, u, h0, cu_seqlens, chunk_size, cu_seqlens_cpu, prec, poison, split,
                store_scores, launch):
        lay = _Layout(r, w, cu_seqlens, chunk_size, launch, cu_seqlens_cpu, prec, split)
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
        return dr, dk, dv, dw, du, dh0, None, None, None, None, None, None, None, None


def chunk_wkv(r, k, v, w_log, u, initial_state=None, cu_seqlens=None, chunk_size=64,
              cu_seqlens_cpu=None, dot_precision=None, poison=False, launch=DEFAULT_LAUNCH):
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
        launch: the kernels' launch settings (`WKVLaunch`, launch.py).

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
                                  prec, poison, split, store_scores, launch)

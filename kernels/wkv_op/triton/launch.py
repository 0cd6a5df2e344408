"""Launch settings of the chunked Triton WKV kernels: one immutable `WKVLaunch` that the caller passes
in (`chunk_wkv(..., launch=...)`), and the functions that turn it into a kernel's launch parameters.

`DEFAULT_LAUNCH` holds the fastest settings measured on the H100 (bench/HISTORY.md has the runs).
Tests and benchmarks build their own: `WKVLaunch.parse("max_span=-1+sub=32")` or
`dataclasses.replace(DEFAULT_LAUNCH, sub=32)`.
"""
import dataclasses

import torch

from .utils import interpreting

SUB = 16  # the smallest sub-block BS: the smallest tl.dot tile

# `WKVLaunch.split_state` is a bit mask over the dots against the fp32 state or state gradient
SPLIT_STATE_BITS = {"fwd_out": 1, "bwd_dr": 2, "bwd_dk": 4, "bwd_dv": 8}


@dataclasses.dataclass(frozen=True)
class WKVLaunch:
    """How the chunked WKV kernels are launched. Every field is an int; the defaults are `DEFAULT_LAUNCH`."""
    # num_warps of each kernel for N <= 64 (larger heads take 8)
    fwd_state: int = 4
    fwd_whole: int = 4
    fwd_out: int = 4
    bwd_state: int = 4
    bwd_whole: int = 8       # at 4 warps it spills
    bwd_dr: int = 4
    bwd_dkdv: int = 4
    # value-slice width of the chunk-state scans when num_seqs * H >= 256 (fewer: 16, so that long
    # single sequences still spread over the SMs); 64: each program reads k, w (or r, w) once
    scan_bv: int = 64
    # 1: bf16 inputs at the default dot precision take bf16 split products (`_mm`) in the in-block
    # and state-update dots
    split: int = 1
    # bit mask (SPLIT_STATE_BITS) of the dots against the fp32 state or state gradient that split
    # too. 7 leaves dv's state-gradient dot in tf32: dv stays at its rounding floor, and splitting it
    # spills registers; dk's must split, for dw's accuracy
    split_state: int = 7
    # tokens per sub-block BS of the level kernels: 16, 32 or 64, at most the chunk size (16: M = 16
    # products; 64: the whole chunk at once, M = 64 products but 6 levels of [64, 64] products)
    sub: int = 16
    # the whole-chunk kernels' bound on a chunk's half-chunk decay, in log2 units
    # (`whole_chunk_max_span`); < 0 sends every chunk to the level kernels
    max_span: int = 96
    # register cap per thread (0: none; N <= 64 only). 168 fits 3 blocks of 4 warps on an SM instead
    # of 2: faster for fwd_out and bwd_dr despite the spills, slower for bwd_dkdv
    maxnreg_fwd_state: int = 0
    maxnreg_fwd_whole: int = 0
    maxnreg_fwd_out: int = 168
    maxnreg_bwd_state: int = 0
    maxnreg_bwd_whole: int = 0
    maxnreg_bwd_dr: int = 168
    maxnreg_bwd_dkdv: int = 0

    @classmethod
    def parse(cls, text, base=None):
        """Settings written `NAME=VALUE[+NAME=VALUE...]` (or `default`: none) over `base` (None: the
        defaults), as the benchmarks' --launch and pytest's --wkv-launch take them. An unknown NAME
        is an error."""
        base = cls() if base is None else base
        if text in ("", "default"):
            return base
        settings = dict(kv.split("=", 1) for kv in text.split("+"))
        known = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(settings) - set(known))
        if unknown:
            raise ValueError(f"unknown launch settings {unknown} in {text!r}; known: {', '.join(known)}")
        return dataclasses.replace(base, **{key: int(val) for key, val in settings.items()})


DEFAULT_LAUNCH = WKVLaunch()


def launch_opts(launch, N, kernel):
    """num_warps of `kernel`, and the register cap `maxnreg` where `launch` sets one (not in the
    interpreter)."""
    opts = {"num_warps": getattr(launch, kernel) if N <= 64 else 8}
    maxnreg = getattr(launch, f"maxnreg_{kernel}")
    if maxnreg and N <= 64 and not interpreting():
        opts["maxnreg"] = maxnreg
    return opts


def sub_block(launch, BT):
    """Tokens per sub-block: `launch.sub`, at most the chunk size BT."""
    BS = min(launch.sub, BT)
    if BS < SUB or BS & (BS - 1) or BT % BS:
        raise ValueError(f"launch sub = {launch.sub}: need a power of two >= {SUB} that "
                         f"divides the chunk size {BT}")
    return BS


def sub_block_levels(BS):
    return BS.bit_length() - 1   # log2(BS): the pair levels G = BS/2, ..., 1 of the in-block terms


def scan_block_v(launch, N, num_scans):
    """Value-slice width of the sequential scans over `num_scans` (sequence, head) pairs: narrower
    slices when there are few, so that long single sequences still spread over the SMs."""
    return max(16, min(N, 16 if num_scans < 256 else launch.scan_bv))


def split_flags(launch, split, kernel):
    """(SPLIT, SPLIT_S) of a kernel: bf16 split products only where the caller's inputs are bf16
    (their raw values are then exact bf16 operands) and no dot precision was forced; SPLIT_S where
    `launch.split_state` has the kernel's bit."""
    on = 2 if interpreting() else 1   # 2: `_bdot` emulates bf16 products in the interpreter
    sp = on if split and launch.split else 0
    return sp, (sp if launch.split_state & SPLIT_STATE_BITS[kernel] else 0)


def whole_chunk_max_span(launch, dtype, prec, split):
    """Largest half-chunk decay (log2 units) `_fwd_whole_kernel` takes in the factored form: its
    factors 2^a, 2^b lie in [2^-span, 2^span], far inside fp32's range (and their bf16 lo parts too)
    for 16-bit inputs; for fp32 inputs a tighter bound keeps the exponents' own rounding (relative to
    span) at fp32 accuracy. Plain tf32 dots (fp16 inputs, or bf16 without split products) round the
    factored operands r 2^a, k 2^b to 11 bits, which the chunk-local dw identity amplifies past
    2e-3: those calls keep every chunk on the level kernels (-1), as does `launch.max_span` < 0."""
    if prec == "tf32" and not split_flags(launch, split, "fwd_out")[0]:
        return -1.0
    limit = launch.max_span
    return float(limit if dtype in (torch.bfloat16, torch.float16) else min(limit, 16))

"""Host helpers shared by the Triton WKV kernels: interpreter detection, dot precision, debug poison.

Nothing here reads kernel settings from the environment: precision and poisoning are explicit
arguments of the host functions (`chunk_wkv(..., dot_precision=..., poison=...)`).
"""
import os

import torch

DOT_PRECISIONS = ("tf32", "tf32x3", "ieee")


def interpreting():
    """True when Triton runs its CPU interpreter (TRITON_INTERPRET=1 set before triton was imported)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def dot_precision(dtype, requested=None):
    """Precision of the fp32 `tl.dot`s inside the kernels (all dot operands are fp32).

    Default: "tf32x3" (three tf32 products, fp32-like) for fp32/fp64 inputs; "tf32" for bf16/fp16
    inputs, whose values are exact in tf32 (the rounding of decayed operands, ~5e-4, stays under the
    bf16 output rounding). `requested` overrides it ("tf32", "tf32x3" or "ieee"). The interpreter
    has no tf32: it always gets "ieee".
    """
    if requested is not None and requested not in DOT_PRECISIONS:
        raise ValueError(f"dot_precision must be one of {DOT_PRECISIONS}, got {requested!r}")
    if interpreting():
        return "ieee"
    if requested is not None:
        return requested
    return "tf32x3" if dtype in (torch.float32, torch.float64) else "tf32"


def segment_sum_precision():
    """Precision of the 0/1-matrix segment sums of log decays: fp32-accurate everywhere."""
    return "ieee" if interpreting() else "tf32x3"


def new_buffer(shape, dtype, device, poison=False):
    """A buffer a kernel must fill completely; `poison=True` (tests) fills it with NaN first, so an
    element the kernel forgets to write shows up."""
    if poison:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)

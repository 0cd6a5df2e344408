"""Small helpers shared by the Triton WKV kernels: interpreter detection, dot precision, debug poison."""
import os

import torch

LOG2E = 1.4426950408889634


def interpreting():
    """True when Triton runs its CPU interpreter (TRITON_INTERPRET=1 set before triton was imported)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def dot_precision(dtype):
    """Precision of the fp32 `tl.dot`s inside the kernels (all dot operands are fp32).

    fp32 inputs need fp32 accuracy (tf32x3: three tf32 products); bf16/fp16 inputs are exact in tf32,
    and tf32 rounding of the decayed operands (~5e-4) stays well under the bf16 output rounding.
    EAGLEFINCH_WKV_DOT=tf32x3 raises the bf16/fp16 path to fp32-like dots too (about 3x the MMA work).
    The interpreter ignores the setting; it is passed as "ieee" there.
    """
    if interpreting():
        return "ieee"
    if dtype in (torch.float32, torch.float64):
        return "tf32x3"
    return os.environ.get("EAGLEFINCH_WKV_DOT", "tf32")


def poison_outputs():
    """Debug flag: fill kernel-written buffers with NaN instead of leaving them uninitialised.

    On by default under the interpreter (tests), or with EAGLEFINCH_WKV_POISON=1.
    """
    flag = os.environ.get("EAGLEFINCH_WKV_POISON")
    if flag is not None:
        return flag == "1"
    return interpreting()


def new_buffer(shape, dtype, device):
    """A buffer a kernel must fill completely: NaN-poisoned in debug mode so a missed element shows."""
    if poison_outputs():
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)

"""The WKV operator of Eagle (RWKV-5.2) and Finch (RWKV-6), behind one function: `wkv`.

`wkv_decode_` advances a pool of fp32 states in place (decode). The Triton kernels live in
`kernels.triton` (imported lazily, so the CPU path needs no Triton)."""
from .wkv import wkv, wkv_decode_, BACKENDS
from .reference import wkv_reference
from .chunked import wkv_chunked

__all__ = ["wkv", "wkv_decode_", "wkv_reference", "wkv_chunked", "BACKENDS"]

"""The kernels of eaglefinch, one op folder each, in the shape of flash-linear-attention's
`fla/ops/<op>/`. One op so far: `wkv_op/`, the WKV recurrence of Eagle (RWKV-5.2) and Finch (RWKV-6).

`wkv` runs it over a sequence with an explicit state; `wkv_decode_` advances a pool of fp32 states in
place (decode). The Triton kernels (`wkv_op.triton`) are imported lazily, so the CPU path needs no
Triton."""
from .wkv_op import BACKENDS, device_offsets, host_offsets, to_device, wkv, wkv_chunked, wkv_decode_, wkv_reference

__all__ = ["wkv", "wkv_decode_", "wkv_reference", "wkv_chunked", "host_offsets", "device_offsets", "to_device",
           "BACKENDS"]

"""Triton WKV kernels: chunked forward and backward (`chunk_wkv`, training and prefill), the in-place
decode step (`wkv_decode_`), and the launch settings of the chunked kernels (`WKVLaunch`,
`DEFAULT_LAUNCH`)."""
from .chunk import ChunkWKVFunction, chunk_wkv
from .chunk_bwd import chunk_wkv_bwd
from .chunk_fwd import chunk_wkv_fwd
from .launch import DEFAULT_LAUNCH, WKVLaunch
from .recurrent import wkv_decode_

__all__ = ["chunk_wkv", "chunk_wkv_fwd", "chunk_wkv_bwd", "ChunkWKVFunction", "wkv_decode_", "WKVLaunch",
           "DEFAULT_LAUNCH"]

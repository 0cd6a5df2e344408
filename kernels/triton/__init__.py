"""Triton WKV kernels: chunked forward/backward (`chunk_wkv`) and in-place decode (`wkv_decode_`)."""
from .chunk import chunk_wkv, chunk_wkv_fwd, chunk_wkv_bwd, ChunkWKVFunction
from .recurrent import wkv_decode_

__all__ = ["chunk_wkv", "chunk_wkv_fwd", "chunk_wkv_bwd", "ChunkWKVFunction", "wkv_decode_"]

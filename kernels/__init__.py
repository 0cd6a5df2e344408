"""The WKV operator of Eagle (RWKV-5.2) and Finch (RWKV-6), behind one function: `wkv`."""
from .wkv import wkv, BACKENDS
from .reference import wkv_reference
from .chunked import wkv_chunked

__all__ = ["wkv", "wkv_reference", "wkv_chunked", "BACKENDS"]

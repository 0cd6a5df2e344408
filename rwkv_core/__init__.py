"""Backbone of Eagle (RWKV-5.2) and Finch (RWKV-6): config, model, recurrent state, checkpoints."""
from .checkpoint import CheckpointError
from .config import RWKVConfig, list_presets
from .model import RWKV
from .state import RWKVState

__all__ = ["RWKV", "RWKVConfig", "RWKVState", "CheckpointError", "list_presets"]

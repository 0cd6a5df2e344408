"""Backbone of Eagle (RWKV-5.2) and Finch (RWKV-6): config, model, recurrent state, checkpoints,
run folders, the shared trainer and the generation loop. It knows token ids and embeddings only:
the domain packages (text, music, visual) build on it, never the other way round."""
from .checkpoint import CheckpointError, load_model, load_tuned_state, save_model, save_tuned_state
from .config import RunConfig, RWKVConfig, TrainConfig, list_presets
from .model import RWKV
from .run import Run
from .state import RWKVState

__all__ = ["RWKV", "RWKVConfig", "RWKVState", "RunConfig", "TrainConfig", "Run", "CheckpointError",
           "load_model", "save_model", "load_tuned_state", "save_tuned_state", "list_presets"]

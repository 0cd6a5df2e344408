"""eaglefinch: Eagle (RWKV-5.2) and Finch (RWKV-6) for text, music and vision on one backbone.

The front door:

    from eaglefinch import RWKV, RWKVConfig, RWKVState, load_model

Subpackages: `eaglefinch.rwkv_core` (backbone, state, checkpoints, run folders, trainer,
generation), `eaglefinch.kernels` (the WKV operator), and the domains `eaglefinch.text`,
`eaglefinch.music`, `eaglefinch.visual`. This package itself holds the command line
(`eaglefinch --help`) and the demo.
"""
from importlib import import_module

# Imported on first use (PEP 562), so that `eaglefinch --help` does not wait for torch.
_FRONT_DOOR = {name: "eaglefinch.rwkv_core" for name in (
    "RWKV", "RWKVConfig", "RWKVState", "RunConfig", "TrainConfig", "Run", "CheckpointError",
    "load_model", "save_model", "load_tuned_state", "save_tuned_state", "list_presets")}

__all__ = sorted(_FRONT_DOOR)


def __getattr__(name):
    if name in _FRONT_DOOR:
        return getattr(import_module(_FRONT_DOOR[name]), name)
    raise AttributeError(f"module 'eaglefinch' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)

"""GPU memory for the benchmarks (bench/train.py, bench/caption.py, bench/deepspeed_scaling.py): a clean
slate before a case, its peak after, and how a case that ran out of memory is recorded."""
import gc

import torch


def on_gpu(device=None) -> bool:
    """Whether memory is measured: CUDA is there and `device` (default: CUDA's) is a GPU."""
    return torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")


def free_memory(device=None):
    """Free what the last case left and restart the peak counters."""
    gc.collect()
    if on_gpu(device):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gb(device=None) -> dict:
    """Peak memory since the last free_memory (empty off the GPU)."""
    if not on_gpu(device):
        return {}
    return {"peak_allocated_GB": torch.cuda.max_memory_allocated() / 1e9,
            "peak_reserved_GB": torch.cuda.max_memory_reserved() / 1e9}


def failure_status(exc) -> str:
    """A case's status after `exc`: "does not fit" for an out-of-memory error, else the error itself."""
    oom = isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()
    return "does not fit" if oom else f"error: {type(exc).__name__}: {str(exc)[:400]}"

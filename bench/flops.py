"""Model FLOPs utilisation, the one formula every training benchmark reports (bench/train.py,
bench/deepspeed_scaling.py).

MFU = 6 * N * tokens/s over the devices' dense bf16 peak: a training step costs 6 FLOPs per parameter
and token (forward 2, backward 4), with N = all parameters, as the issue's baseline counts them
(`mfu_non_embedding` leaves the embedding out: its forward is a lookup). Recomputation (gradient
checkpointing) is not counted: it is work the model does not need.
"""

# dense bf16 tensor-core peak (no sparsity), by device name; the first match counts
PEAK_BF16 = [("H100 PCIe", 756e12), ("H100", 989.4e12), ("H200", 989.4e12), ("A100", 312e12)]


def peak_bf16(device_name: str):
    """The dense bf16 peak of a device (FLOP/s), or None when its name is not in PEAK_BF16."""
    return next((peak for key, peak in PEAK_BF16 if key in device_name), None)


def mfu(n_params: int, tokens_per_s: float, peak: float, devices: int = 1) -> float:
    """The fraction of `devices` devices' peak that 6 * n_params FLOPs per token at tokens_per_s is."""
    return 6 * n_params * tokens_per_s / (peak * devices)

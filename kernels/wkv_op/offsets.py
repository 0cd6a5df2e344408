"""Packed-sequence offsets (`cu_seqlens`) on the host and the device without stalling the GPU.

A packed forward hands the same offsets to every layer, and the Triton path needs them on both sides:
on the host to size its launch, on the device for the kernels. Any blocking copy between the two
waits for all the work queued before it, so one per layer would make the host wait on the GPU 24
times in a forward. Here each offsets tensor is copied to the host once and kept on the tensor, and
host tensors go to the device from pinned memory, asynchronously.
"""
import torch


def to_device(values, device, dtype=None) -> torch.Tensor:
    """`values` (a list of numbers, or a tensor anywhere) as a tensor on `device`; from the host to a
    GPU through pinned memory, without waiting for the GPU's queued work."""
    device = torch.device(device)
    if not isinstance(values, torch.Tensor):
        values = torch.tensor(values, dtype=dtype)
    if values.device.type != "cpu" or device.type != "cuda":
        return values.to(device, dtype)
    return values.to(dtype=dtype).pin_memory().to(device, non_blocking=True)


def host_offsets(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """cu_seqlens on the host, copied once per tensor (kept on the tensor, with the version it was
    copied at): a packed forward costs one device sync for its offsets instead of one per layer,
    and none when they were made by `device_offsets`."""
    if cu_seqlens.device.type == "cpu":
        return cu_seqlens
    version, copy = getattr(cu_seqlens, "_host_copy", (None, None))
    if version != cu_seqlens._version:
        copy = cu_seqlens.cpu()
        cu_seqlens._host_copy = (cu_seqlens._version, copy)
    return copy


def device_offsets(lengths, device) -> torch.Tensor:
    """cu_seqlens [S + 1] on `device` for sequences of these lengths, made from the host, so that
    `host_offsets` never has to copy it back."""
    offsets = torch.tensor([0, *lengths]).cumsum(0)
    on_device = to_device(offsets, device)
    if on_device.device.type != "cpu":
        on_device._host_copy = (on_device._version, offsets)
    return on_device

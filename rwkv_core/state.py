"""The recurrent state of an Eagle/Finch model: everything needed to continue a sequence."""
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class RWKVState:
    """Per-layer recurrent state, stacked over layers; batch is dimension 1 of every field.

    att_shift: [L, B, C]        last ln1 output (time-mix token shift), activation dtype
    wkv:       [L, B, H, N, N]  WKV matrix state indexed [key, value], always fp32
    ffn_shift: [L, B, C]        last ln2 output (channel-mix token shift), activation dtype

    The model never mutates a state it is given: it returns a new one. Use `clone()` to fork.
    """

    att_shift: torch.Tensor
    wkv: torch.Tensor
    ffn_shift: torch.Tensor

    @classmethod
    def zeros(cls, n_layer, batch_size, n_embd, n_head, head_size, device=None, dtype=torch.float32):
        return cls(
            att_shift=torch.zeros(n_layer, batch_size, n_embd, device=device, dtype=dtype),
            wkv=torch.zeros(n_layer, batch_size, n_head, head_size, head_size, device=device, dtype=torch.float32),
            ffn_shift=torch.zeros(n_layer, batch_size, n_embd, device=device, dtype=dtype),
        )

    @property
    def batch_size(self) -> int:
        return self.wkv.shape[1]

    @property
    def device(self) -> torch.device:
        return self.wkv.device

    @property
    def tensors(self) -> tuple:
        """(att_shift, wkv, ffn_shift)."""
        return self.att_shift, self.wkv, self.ffn_shift

    def _map(self, fn) -> "RWKVState":
        return RWKVState(*(fn(t) for t in self.tensors))

    def clone(self) -> "RWKVState":
        return self._map(torch.clone)

    def detach(self) -> "RWKVState":
        return self._map(torch.Tensor.detach)

    def to(self, device=None, dtype=None) -> "RWKVState":
        """Move to a device; `dtype` changes the shift states only (the WKV state stays fp32)."""
        return RWKVState(self.att_shift.to(device=device, dtype=dtype), self.wkv.to(device=device),
                         self.ffn_shift.to(device=device, dtype=dtype))

    def __getitem__(self, index) -> "RWKVState":
        """Select sequences of the batch: an int keeps a batch of one; a slice, list or tensor reorders."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return self._map(lambda t: t[:, index])

    @staticmethod
    def cat(states: list["RWKVState"]) -> "RWKVState":
        """Concatenate along the batch."""
        return RWKVState(*(torch.cat([getattr(s, f) for s in states], dim=1)
                           for f in ("att_shift", "wkv", "ffn_shift")))

    def save(self, path: str | Path) -> None:
        """Write as safetensors (atomically): a saved state can never run code when loaded."""
        from safetensors.torch import save_file
        from .files import atomic_path
        with atomic_path(path) as tmp:
            save_file({"att_shift": self.att_shift.contiguous(), "wkv": self.wkv.contiguous(),
                       "ffn_shift": self.ffn_shift.contiguous()}, str(tmp))

    @classmethod
    def load(cls, path: str | Path, device="cpu") -> "RWKVState":
        from safetensors.torch import load_file
        try:
            d = load_file(str(path), device=str(device))
            return cls(d["att_shift"], d["wkv"], d["ffn_shift"])
        except Exception as e:  # safetensors raises its own error types; all mean the same here
            raise ValueError(f"{path}: not a saved RWKV state ({e})") from None

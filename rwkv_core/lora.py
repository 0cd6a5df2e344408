"""LoRA adapters on the time-mix and channel-mix projections: train a few low-rank matrices beside a
frozen model, save them as a small file, run them unmerged, or merge them into an official checkpoint.

    add_adapters(model, ["att.key", "ffn.value"], rank=16, alpha=32)   # what train_mode "lora" does
    save_adapters(model, "run/adapters.safetensors")
    load_adapters(base, "run/adapters.safetensors")   # unmerged: the base weights stay as they are
    merge_adapters(base)                               # plain nn.Linear weights W + scale * B A again

An adapted projection (`LoRALinear`) keeps its weight W, under its official name, and adds
y = x W^T + scale * (x A^T) B^T with A [r, in], B [out, r] and scale = alpha / r.
- LoRA: A uniform in ±1/sqrt(in), B = 0, so the output starts exactly at x W^T.
- PiSSA: A and B start as the top-r singular directions of W (scale * B A = U_r S_r V_r^T) and
  train from there. The paper subtracts that product from W; here W stays untouched and the layer
  subtracts the starting factors instead, y = x W^T + scale * ((x A^T) B^T - (x A0^T) B0^T) with
  A0, B0 frozen copies: the same function of A and B, an output exactly x W^T at the start, and a
  base that is bitwise the checkpoint it came from. Saved, the update relative to that base is
  the rank-2r pair [A; A0], [B, -B0], so a PiSSA file is applied to the original base like any
  LoRA file.

The adapters file (safetensors): `blocks.{i}.{att|ffn}.{name}.lora_A` [R, in] and `.lora_B` [out, R],
and, when they trained, the per-channel parameters (`is_small`) under their official names, which
replace the base's on loading. Its metadata holds the scale, the base model's shape and a probe of
the base's weights (a few values, compared on loading within bf16 rounding), so adapters are not
applied to another model by mistake; a base that differs only by a small fine-tune may pass it.
"""
import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint import CheckpointError, read_state_dict
from .config import LORA_INITS, LORA_TARGETS
from .files import atomic_path

FORMAT = "eaglefinch-lora"
ADAPTER_TENSORS = ("lora_A", "lora_B", "lora_A0", "lora_B0")
SHAPE_FIELDS = ("arch", "n_layer", "n_embd", "vocab_size", "head_size", "dim_att", "dim_ffn",
                "mix_lora_dim", "decay_lora_dim")
PROBE_VALUES = 16   # values taken from each probed weight


class LoRALinear(nn.Module):
    """A projection without bias: its weight W (the base, frozen in training) plus a low-rank
    update, y = x W^T + scale * ((x A^T) B^T - (x A0^T) B0^T); A0, B0 (PiSSA's starting factors,
    frozen) are None for LoRA."""

    def __init__(self, weight: nn.Parameter, lora_A, lora_B, scale: float, frozen_A=None, frozen_B=None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.weight = weight
        self.scale = scale
        self.lora_A = nn.Parameter(lora_A)
        self.lora_B = nn.Parameter(lora_B)
        self.register_buffer("lora_A0", frozen_A)
        self.register_buffer("lora_B0", frozen_B)

    def forward(self, x):
        delta = F.linear(F.linear(x, self.lora_A), self.lora_B)
        if self.lora_A0 is not None:  # subtracted before scaling: exactly zero while A, B are A0, B0
            delta = delta - F.linear(F.linear(x, self.lora_A0), self.lora_B0)
        return F.linear(x, self.weight) + self.scale * delta

    def factors(self):
        """(A [R, in], B [out, R]) with scale * B A the update to W: (A, B), or for PiSSA ([A; A0], [B, -B0])."""
        if self.lora_A0 is None:
            return self.lora_A, self.lora_B
        return torch.cat([self.lora_A, self.lora_A0]), torch.cat([self.lora_B, -self.lora_B0], dim=1)

    def delta_weight(self):
        """scale * B A in fp32: what merging adds to W."""
        A, B = self.factors()
        return self.scale * (B.float() @ A.float())


def is_adapter_key(name: str) -> bool:
    """A state-dict key of an adapter tensor (never one of the official checkpoint's)."""
    return name.rsplit(".", 1)[-1] in ADAPTER_TENSORS


def is_small(name: str) -> bool:
    """A per-channel parameter, by its name: time_* mixes, decays and faaaa (not the Finch LoRA
    matrices time_*_w1/_w2, not time_state), and the weights and biases of ln0, ln1, ln2, ln_x, ln_out."""
    parts = name.split(".")
    if parts[-1].startswith("time_"):
        return parts[-1] != "time_state" and not parts[-1].endswith(("_w1", "_w2"))
    return len(parts) > 1 and parts[-2].startswith("ln")


def target_modules(model, targets=LORA_TARGETS) -> dict:
    """{"blocks.{i}.{target}": (parent module, attribute name)} of the projections named by `targets`."""
    found = {}
    for i, block in enumerate(model.blocks):
        for target in targets:
            part, name = target.split(".")
            found[f"blocks.{i}.{target}"] = (getattr(block, part), name)
    return found


def adapted_modules(model) -> dict:
    """{module name: LoRALinear} of the model's adapted projections."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def has_adapters(model) -> bool:
    return bool(adapted_modules(model))


@torch.no_grad()
def add_adapters(model, targets=LORA_TARGETS, rank: int = 16, alpha: float = 32.0, init: str = "lora") -> None:
    """Give each projection named by `targets` (in every block) a trainable adapter of rank `rank`,
    scale alpha / rank, initialised by `init` ("lora" or "pissa"); the model's output is unchanged.
    LoRA's A is drawn from torch's global generator on the CPU (the same on every device)."""
    if init not in LORA_INITS:
        raise ValueError(f"init must be one of {', '.join(LORA_INITS)}, got {init!r}")
    unknown = [t for t in targets if t not in LORA_TARGETS]
    if unknown:
        raise ValueError(f"unknown LoRA targets {unknown}; the projections are {', '.join(LORA_TARGETS)}")
    if has_adapters(model):
        raise ValueError("the model already has adapters (merge_adapters first)")
    scale = alpha / rank
    for name, (parent, attr) in target_modules(model, targets).items():
        W = getattr(parent, attr).weight
        out_features, in_features = W.shape
        if init == "pissa":
            if rank > min(out_features, in_features):
                raise ValueError(f"lora_rank {rank} is larger than {name} ({out_features} x {in_features}) allows for PiSSA")
            U, S, Vh = torch.linalg.svd(W.float(), full_matrices=False)
            root = (S[:rank] / scale).sqrt()                       # scale * B A = U_r diag(S_r) Vh_r
            A, B = (root[:, None] * Vh[:rank]).to(W.dtype), (U[:, :rank] * root).to(W.dtype)
            module = LoRALinear(W, A.clone(), B.clone(), scale, A, B)
        else:
            bound = in_features ** -0.5
            A = torch.empty(rank, in_features).uniform_(-bound, bound).to(W)
            module = LoRALinear(W, A, W.new_zeros(out_features, rank), scale)
        setattr(parent, attr, module)


@torch.no_grad()
def merge_adapters(model) -> None:
    """Fold every adapter into its weight, in place (W + scale * B A, summed in fp32): the model is a
    plain RWKV again, its state dict the official layout. A model without adapters is left as it is."""
    for name, module in adapted_modules(model).items():
        W = module.weight
        W.copy_((W.float() + module.delta_weight()).to(W.dtype))
        parent_name, attr = name.rsplit(".", 1)
        linear = nn.Linear(module.in_features, module.out_features, bias=False, device="meta")
        linear.weight = W
        setattr(model.get_submodule(parent_name), attr, linear)


def base_probe(model) -> list[float]:
    """A few base weights that recognise the model the adapters were trained on: the first values of
    the head and of the first and last block's att.key and ffn.key (never trained in LoRA mode)."""
    weights = [model.head.weight]
    for block in (model.blocks[0], model.blocks[-1]):
        weights += [block.att.key.weight, block.ffn.key.weight]
    return [float(v) for w in weights for v in w.detach().flatten()[:PROBE_VALUES].float().cpu()]


def save_adapters(model, path, small: bool = False) -> None:
    """Write the model's adapters (see the module docstring for the layout), atomically. `small`:
    with them, every per-channel parameter (they trained too: lora_train_small), which replace the
    base's on loading."""
    modules = adapted_modules(model)
    if not modules:
        raise ValueError("the model has no adapters to save (train with train_mode 'lora', or add_adapters)")
    scales = {m.scale for m in modules.values()}
    if len(scales) != 1:
        raise ValueError(f"the adapters have different scales {sorted(scales)}; one file holds one scale")
    sd = {}
    for name, module in modules.items():
        A, B = module.factors()
        sd[f"{name}.lora_A"], sd[f"{name}.lora_B"] = A, B
    if small:
        sd.update({name: p for name, p in model.named_parameters() if is_small(name)})
    sd = {k: v.detach().contiguous().cpu() for k, v in sd.items()}
    shape = {k: v for k, v in model.cfg.to_dict().items() if k in SHAPE_FIELDS}
    metadata = {"format": FORMAT, "scale": repr(scales.pop()), "model": json.dumps(shape),
                "base_probe": json.dumps(base_probe(model))}
    from safetensors.torch import save_file
    with atomic_path(path) as tmp:
        save_file(sd, str(tmp), metadata=metadata)


def load_adapters(model, path) -> None:
    """Attach the adapters saved at `path` to `model`, unmerged (the base weights are not touched;
    per-channel parameters the file holds replace the model's). Everything is checked before the
    model changes: the file's format, the base model's shape and probe, every key and shape."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: an adapters file is a .safetensors (adapters.safetensors of a LoRA run)")
    sd, meta = read_state_dict(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an adapters file (no LoRA metadata); a model checkpoint goes to --checkpoint")
    try:
        scale, shape, probe = float(meta["scale"]), json.loads(meta["model"]), json.loads(meta["base_probe"])
        probe = torch.tensor(probe, dtype=torch.float32)
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: damaged adapters metadata ({e})") from None
    ours = {k: v for k, v in model.cfg.to_dict().items() if k in SHAPE_FIELDS}
    if shape != ours:
        differ = ", ".join(f"{k} {shape.get(k)} (this model: {ours[k]})" for k in ours if shape.get(k) != ours[k])
        raise CheckpointError(f"{path}: adapters for another model shape: {differ}")
    here = torch.tensor(base_probe(model))
    if here.shape != probe.shape or not torch.allclose(here, probe, rtol=1e-2, atol=1e-3 * float(probe.abs().max())):
        raise CheckpointError(f"{path}: the adapters were trained on another base model (its weights differ "
                              f"from this one's); give the checkpoint they were trained from")
    if has_adapters(model):
        raise ValueError("the model already has adapters (merge_adapters first)")

    projections, params = target_modules(model), dict(model.named_parameters())
    pairs, small = {}, {}
    for key, tensor in sd.items():
        module, _, kind = key.rpartition(".")
        if kind in ("lora_A", "lora_B") and module in projections:
            pairs.setdefault(module, {})[kind] = tensor
        elif is_small(key) and key in params:
            if tensor.shape != params[key].shape:
                raise CheckpointError(f"{path}: key {key!r} has shape {list(tensor.shape)}, "
                                      f"expected {list(params[key].shape)}")
            small[key] = tensor
        else:
            raise CheckpointError(f"{path}: unexpected key {key!r} (an adapters file holds lora_A and lora_B "
                                  f"of the projections, and per-channel parameters)")
    if not pairs:
        raise CheckpointError(f"{path}: holds no adapters (no lora_A / lora_B keys)")
    for module, factors in pairs.items():
        if set(factors) != {"lora_A", "lora_B"}:
            missing = ({"lora_A", "lora_B"} - set(factors)).pop()
            raise CheckpointError(f"{path}: {module}.{missing} is missing")
        A, B = factors["lora_A"], factors["lora_B"]
        parent, attr = projections[module]
        out_features, in_features = getattr(parent, attr).weight.shape
        if A.dim() != 2 or B.dim() != 2 or A.shape[1] != in_features or B.shape[0] != out_features \
                or A.shape[0] != B.shape[1]:
            raise CheckpointError(f"{path}: {module} has lora_A {list(A.shape)} and lora_B {list(B.shape)}; "
                                  f"this model needs [R, {in_features}] and [{out_features}, R]")

    for module, factors in pairs.items():
        parent, attr = projections[module]
        W = getattr(parent, attr).weight
        setattr(parent, attr, LoRALinear(W, factors["lora_A"].to(W), factors["lora_B"].to(W), scale))
    with torch.no_grad():
        for key, tensor in small.items():
            params[key].copy_(tensor)

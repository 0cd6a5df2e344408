"""Loading and saving checkpoints in the official BlinkDL layout (a flat state dict).

Loading never unpickles arbitrary objects: every PyTorch file (`.pth`, a run's `checkpoint.pt`,
DeepSpeed's shards) goes through `read_torch_file`, which is `torch.load(weights_only=True)`, and
`.safetensors` through safetensors. Every problem becomes one `CheckpointError` that names the
file and, where it applies, the key and the expected shape.
"""
import contextlib
import json
import pickle
import re
from pathlib import Path

import torch

from .config import DOMAINS, RWKVConfig
from .files import atomic_path
from .model import RWKV
from .state import RWKVState


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used, with the reason."""


REFUSED = "it contains pickled code or objects other than tensors, which are refused"
DAMAGED = "truncated, corrupt or not a PyTorch file"
# what the weights-only unpickler says when a file asks for more than tensors and plain containers
_REFUSAL_MARKERS = ("Unsupported global", "Trying to call reduce", "Can only build", "Can only create new object",
                    "is blocked", "Unsupported class")


def one_line(e: BaseException, limit: int = 200) -> str:
    """An exception's message on one line, cut at `limit` characters (its type's name when it has none)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[:limit - 1] + "…"


def torch_load_problem(e: BaseException) -> str | None:
    """What a failed `torch.load(weights_only=True)` says about the file, in a few words (never
    torch's advice to load it with weights_only=False); None when `e` is not such a failure."""
    if isinstance(e, pickle.UnpicklingError):
        return REFUSED if any(marker in str(e) for marker in _REFUSAL_MARKERS) else DAMAGED
    if isinstance(e, EOFError) or "PytorchStreamReader" in str(e):  # a cut pickle, a broken zip archive
        return DAMAGED
    return None


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty")


def read_torch_file(path, map_location="cpu", allowed_classes=(), mmap=False):
    """`torch.load(path, weights_only=True)`: tensors and plain containers only, so no code of the
    file's choosing runs. Every failure is one CheckpointError naming the file.

    `allowed_classes`: plain data classes the file may also hold (rebuilt from their fields, like a
    dataclass; never functions or anything that runs code when unpickled). `mmap`: the tensors stay
    in the file, mapped into memory, and are read when touched."""
    path = Path(path)
    _require_file(path)
    allowed = torch.serialization.safe_globals(list(allowed_classes)) if allowed_classes else contextlib.nullcontext()
    try:
        with allowed:
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror or one_line(e)})") from None
    except Exception as e:  # anything else the loader raises is about the file's content
        raise CheckpointError(f"{path}: not a loadable PyTorch checkpoint: {torch_load_problem(e) or DAMAGED}") from None


@contextlib.contextmanager
def restoring_from(path):
    """Turn what goes wrong while restoring state read from `path` (a missing entry, a tensor of
    another shape, another kind of object) into one CheckpointError naming the file."""
    try:
        yield
    except CheckpointError:
        raise
    except KeyError as e:
        raise CheckpointError(f"{path}: cannot resume from it: it has no {e.args[0]!r} entry") from None
    except (TypeError, ValueError, RuntimeError, IndexError, AttributeError, AssertionError) as e:
        raise CheckpointError(f"{path}: cannot resume from it: {one_line(e)}") from None


def read_state_dict(path) -> tuple[dict, dict]:
    """Read a flat {name: tensor} dict and its metadata ({} for .pth) from .pth or .safetensors."""
    path = Path(path)
    _require_file(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
        except Exception as e:  # safetensors raises its own error types for corrupt files
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    sd = read_torch_file(path)
    if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                           for k, v in sd.items()):
        raise CheckpointError(f"{path}: expected a flat {{name: tensor}} state dict (official layout)")
    return sd, {}


def infer_config(sd: dict, source="checkpoint") -> RWKVConfig:
    """Version and every dimension from keys and shapes (rwkv-math.md §3.1)."""
    def get(key):
        if key not in sd:
            raise CheckpointError(f"{source}: missing key {key!r}; is this an Eagle (v5.2) or Finch (v6) model?")
        return sd[key]

    if any(k.endswith("._strategy") or k == "_strategy" for k in sd):
        raise CheckpointError(f"{source}: converted by the rwkv package for one strategy; load the original .pth")
    if "blocks.0.att.time_maa_x" in sd:
        arch = "finch"
    elif "blocks.0.att.time_mix_k" in sd:
        arch = "eagle"
        if get("blocks.0.att.time_decay").dim() != 2:
            raise CheckpointError(f"{source}: RWKV-5.0/5.1 (per-head decay) is not supported, only 5.2 and 6.0")
    elif any(k.startswith("blocks.") and k.endswith(".att.time_state") for k in sd) and "emb.weight" not in sd:
        raise CheckpointError(f"{source}: contains only tuned states (att.time_state); load it with "
                              f"a base model (state=...)")
    else:
        raise CheckpointError(f"{source}: not an Eagle/Finch checkpoint (no blocks.0.att.time_maa_x "
                              f"or blocks.0.att.time_mix_k key)")
    block_ids = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    V, C = get("emb.weight").shape
    H, N = get("blocks.0.att.time_faaaa").shape
    kwargs = dict(arch=arch, n_layer=max(block_ids) + 1, n_embd=C, vocab_size=V, head_size=N,
                  dim_att=get("blocks.0.att.key.weight").shape[0],
                  dim_ffn=get("blocks.0.ffn.key.weight").shape[0],
                  tuned_state="blocks.0.att.time_state" in sd)
    if arch == "finch":
        kwargs["mix_lora_dim"] = get("blocks.0.att.time_maa_w1").shape[1] // 5
        kwargs["decay_lora_dim"] = get("blocks.0.att.time_decay_w1").shape[1]
    try:
        return RWKVConfig(**kwargs)
    except ValueError as e:
        raise CheckpointError(f"{source}: inconsistent dimensions ({e})") from None


def check_state_dict(sd: dict, cfg: RWKVConfig, source="checkpoint") -> None:
    """Every expected key present with its expected shape, nothing unexpected."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in RWKV(cfg).state_dict().items()}
    for key, shape in expected.items():
        if key not in sd:
            raise CheckpointError(f"{source}: missing key {key!r} (expected shape {list(shape)})")
        if tuple(sd[key].shape) != shape:
            raise CheckpointError(f"{source}: key {key!r} has shape {list(sd[key].shape)}, "
                                  f"expected {list(shape)}")
        if not sd[key].is_floating_point():
            raise CheckpointError(f"{source}: key {key!r} has dtype {sd[key].dtype}, expected a float")
    unexpected = sorted(set(sd) - set(expected))
    if unexpected:
        raise CheckpointError(f"{source}: unexpected key {unexpected[0]!r}"
                              + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""))


def domain_tensors(sd: dict, domain: str) -> dict:
    """The tensors a domain keeps beside the model in our .safetensors files, under its own prefix
    ("visual.projector.weight", ...), with the prefix removed."""
    prefix = f"{domain}."
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def model_from_state_dict(sd: dict, meta: dict, source, dtype=torch.float32, device="cpu") -> RWKV:
    """The RWKV of a state dict read by `read_state_dict` (a domain's prefixed tensors are skipped)."""
    sd = {k: v for k, v in sd.items() if k.split(".", 1)[0] not in DOMAINS}
    cfg = infer_config(sd, source=str(source))
    if "config" in meta:  # our safetensors carry the full config (ctx_len and the rest)
        try:
            cfg = RWKVConfig.from_dict({**json.loads(meta["config"]), "tuned_state": cfg.tuned_state})
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"{source}: invalid model config in its metadata ({e})") from None
    check_state_dict(sd, cfg, source=str(source))
    with torch.device("meta"):
        model = RWKV(cfg)
    model.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in sd.items()}, assign=True)
    return model


def load_model(path, dtype=torch.float32, device="cpu", state=None) -> RWKV:
    """An RWKV from an official BlinkDL .pth (v5.2 or v6) or our .safetensors; every dimension is
    inferred from the keys and shapes. `state`: a file of tuned initial states (official
    `blocks.{l}.att.time_state` keys only), given to the model."""
    sd, meta = read_state_dict(path)
    model = model_from_state_dict(sd, meta, path, dtype, device)
    if state is not None:
        load_tuned_state(model, state)
    return model


def save_model(model, path, dtype=None, domain_tensors: dict | None = None) -> None:
    """Official layout, written atomically. `.safetensors` also stores the config as metadata, and
    may carry a domain's own tensors beside the model (keys under the domain's prefix, e.g.
    "visual.projector.weight"), so that everything inference needs is one file, written at once.
    A model with LoRA adapters saves its base weights: the adapters go to their own file
    (`lora.save_adapters`), or into the weights with `lora.merge_adapters` first."""
    from .lora import is_adapter_key
    path = Path(path)
    sd = {k: v.detach().to(dtype or v.dtype).contiguous().cpu() for k, v in model.state_dict().items()
          if not is_adapter_key(k)}
    if domain_tensors:
        if path.suffix != ".safetensors":
            raise ValueError(f"{path}: a domain's tensors go only into .safetensors (a .pth is the official layout)")
        if any(k.split(".", 1)[0] not in DOMAINS for k in domain_tensors):
            raise ValueError(f"domain tensors need a domain prefix ({', '.join(DOMAINS)}), got {sorted(domain_tensors)[:3]}")
        sd.update({k: v.detach().contiguous().cpu() for k, v in domain_tensors.items()})
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file
            save_file(sd, str(tmp), metadata={"config": json.dumps(model.cfg.to_dict()), "format": "pt"})
        else:
            torch.save(sd, tmp)


def save_tuned_state(model, path) -> None:
    """Write only the tuned initial states, as official `blocks.{l}.att.time_state` keys
    ([H, value, key]); merged into a base checkpoint, the `rwkv` package uses them."""
    if not model.cfg.tuned_state:
        raise ValueError("the model has no tuned state (train with train_mode='state' first)")
    sd = {f"blocks.{i}.att.time_state": b.att.time_state.detach().cpu().contiguous()
          for i, b in enumerate(model.blocks)}
    with atomic_path(path) as tmp:
        if Path(path).suffix == ".safetensors":
            from safetensors.torch import save_file
            save_file(sd, str(tmp))
        else:
            torch.save(sd, tmp)


def load_tuned_state(model, path) -> None:
    """Give `model` the tuned initial states stored in `path` (official time_state keys only)."""
    sd = read_tuned_state(path, model.cfg)
    model.add_tuned_state()
    with torch.no_grad():
        for i, block in enumerate(model.blocks):
            block.att.time_state.copy_(sd[f"blocks.{i}.att.time_state"])


def initial_state_from_file(model, path) -> RWKVState:
    """The state of one sequence to start from, read from a tuned-state file (official time_state
    keys: zero shift states, the tuned WKV states) or a saved RWKVState (`RWKVState.save`: a
    conversation to go on with), on the model's device; checked to fit the model."""
    from safetensors import safe_open
    device, dtype, cfg = model.emb.weight.device, model.emb.weight.dtype, model.cfg
    if Path(path).suffix == ".safetensors":
        with safe_open(str(path), "pt") as f:
            saved = set(f.keys()) == {"att_shift", "wkv", "ffn_shift"}
        if saved:
            state = RWKVState.load(path, device)
            want = RWKVState.zeros(cfg.n_layer, 1, cfg.n_embd, cfg.n_head, cfg.head_size)
            for name in ("att_shift", "wkv", "ffn_shift"):
                if getattr(state, name).shape != getattr(want, name).shape:
                    raise CheckpointError(f"{path}: {name} has shape {list(getattr(state, name).shape)}, this model's "
                                          f"state of one sequence has {list(getattr(want, name).shape)}")
            return state.to(device, dtype)
    sd = read_tuned_state(path, cfg)
    wkv = torch.stack([sd[f"blocks.{i}.att.time_state"].float().transpose(1, 2) for i in range(cfg.n_layer)])
    shift = torch.zeros(cfg.n_layer, 1, cfg.n_embd, device=device, dtype=dtype)
    return RWKVState(shift, wkv[:, None].to(device), shift.clone())


def read_tuned_state(path, cfg) -> dict:
    """The time_state tensors of a tuned-state file, checked against the model's config."""
    sd, _ = read_state_dict(path)
    expected = {f"blocks.{i}.att.time_state" for i in range(cfg.n_layer)}
    if set(sd) != expected:
        extra = sorted(set(sd) - expected) or sorted(expected - set(sd))
        raise CheckpointError(f"{path}: a state file must hold exactly blocks.0..{cfg.n_layer - 1}.att.time_state; "
                              f"check key {extra[0]!r}")
    shape = [cfg.n_head, cfg.head_size, cfg.head_size]
    for key, value in sd.items():
        if list(value.shape) != shape:
            raise CheckpointError(f"{path}: key {key!r} has shape {list(value.shape)}, expected {shape}")
    return sd

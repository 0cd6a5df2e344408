"""Configuration: the model's shape (`RWKVConfig`), the trainer's settings (`TrainConfig`), and a
training run's config file (`RunConfig`: model, train and one domain section), parsed here and
nowhere else.

Configs ship inside the package (`eaglefinch/configs/`, package data). Everywhere a config is
asked for, a shipped config's name ("finch-1.6b", "text-tiny", "deepspeed/zero1") and a path to a
JSON file of your own work alike (`config_file`).
"""
import dataclasses
import json
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

ARCHS = ("eagle", "finch")  # eagle = RWKV-5.2 (x052), finch = RWKV-6 (x060)
DOMAINS = ("text", "music", "visual")
TRAIN_MODES = ("full", "state", "lora")
# the projections LoRA can adapt, named as in every block (blocks.{i}.att.key, ...)
LORA_TARGETS = ("att.receptance", "att.key", "att.value", "att.gate", "att.output",
                "ffn.key", "ffn.value", "ffn.receptance")
LORA_INITS = ("lora", "pissa")


def _shipped():
    return resources.files("eaglefinch.configs")


def shipped_configs() -> list[str]:
    """Names of every config the package ships: presets, training configs, deepspeed/zero1, ..."""
    names = []
    for entry in _shipped().iterdir():
        if entry.name.endswith(".json"):
            names.append(entry.name[:-5])
        elif entry.is_dir() and not entry.name.startswith("__"):
            names += [f"{entry.name}/{e.name[:-5]}" for e in entry.iterdir() if e.name.endswith(".json")]
    return sorted(names)


def config_file(name_or_path):
    """A config to read: a JSON file that exists, else the shipped config of that name (".json"
    optional; "configs/" in front is tolerated, so the README's paths work from anywhere)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    name = str(name_or_path).removesuffix(".json").removeprefix("configs/")
    shipped = _shipped().joinpath(*f"{name}.json".split("/"))
    if name and shipped.is_file():
        return shipped
    raise FileNotFoundError(f"no config file {str(name_or_path)!r} and no shipped config of that name; "
                            f"shipped: {', '.join(shipped_configs())}")


def read_config(name_or_path) -> dict:
    """The JSON object of a config file or shipped config (one clear error if it is not one)."""
    source = config_file(name_or_path)
    try:
        d = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{name_or_path}: cannot read the config ({e})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{name_or_path}: a config is a JSON object")
    return d


def dataclass_from_dict(cls, d, what: str):
    """cls(**d), refusing keys the dataclass does not have (a typo must not silently fall back to a default)."""
    if not isinstance(d, dict):
        raise ValueError(f"the {what} must be a JSON object, got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {what} keys {unknown}; known keys: {sorted(known)}")
    try:
        return cls(**d)
    except TypeError as e:
        raise ValueError(f"invalid {what}: {e}") from None


def _check_types(obj, what: str) -> None:
    """Each field's value has its annotated type (an int where a float goes; never a bool for a number)."""
    for f in dataclasses.fields(obj):
        allowed = typing.get_args(f.type) or (f.type,)
        allowed += (int,) if float in allowed else ()
        value = getattr(obj, f.name)
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise ValueError(f"{what} {f.name} must be of type {f.type.__name__ if isinstance(f.type, type) else f.type}, "
                             f"got {value!r}")


@dataclass
class RWKVConfig:
    """Shape of an Eagle or Finch model. Derived fields left as None get the official defaults."""

    arch: str = "finch"
    n_layer: int = 12
    n_embd: int = 768
    vocab_size: int = 65536
    head_size: int = 64
    dim_att: int | None = None        # default n_embd
    dim_ffn: int | None = None        # default int(3.5 * n_embd) // 32 * 32
    mix_lora_dim: int = 32            # Finch ddlerp LoRA (D); 64 in the released 7B/14B
    decay_lora_dim: int = 64          # Finch decay LoRA (Dd); 128 in the released 7B/14B
    ctx_len: int = 4096
    tuned_state: bool = False         # has att.time_state: a trained initial WKV state per layer

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if self.dim_att is None:
            self.dim_att = self.n_embd
        if self.dim_ffn is None:
            self.dim_ffn = int(3.5 * self.n_embd) // 32 * 32
        for name in ("n_layer", "n_embd", "vocab_size", "head_size", "dim_att", "dim_ffn",
                     "mix_lora_dim", "decay_lora_dim", "ctx_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.dim_att % self.head_size:
            raise ValueError(f"dim_att ({self.dim_att}) must be a multiple of head_size ({self.head_size})")

    @property
    def n_head(self) -> int:
        return self.dim_att // self.head_size

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RWKVConfig":
        return dataclass_from_dict(cls, d, "model config")

    @classmethod
    def load(cls, name_or_path) -> "RWKVConfig":
        """A preset ("finch-1.6b"), or a JSON file: a model config, or a training config's "model" section."""
        d = read_config(name_or_path)
        return cls.from_dict(d.get("model", d))

    def save(self, path) -> None:
        from .files import write_json_atomic
        write_json_atomic(path, self.to_dict())


def list_presets() -> list[str]:
    """Names of the shipped model presets (official sizes and tiny ones)."""
    return [name for name in shipped_configs() if "arch" in read_config(name)]


@dataclass
class TrainConfig:
    """The trainer's settings: the "train" section of a run config."""

    max_steps: int = 1000
    decay_steps: int | None = None    # length of the cosine schedule; default max_steps (so a run can stop early and resume on the same schedule)
    batch_size: int = 8
    ctx_len: int = 512
    lr_init: float = 6e-4
    lr_final: float = 6e-5
    warmup_steps: int = 10
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.99
    adam_eps: float = 1e-8
    grad_clip: float = 1.0
    l2wrap: bool = True
    grad_checkpointing: bool = False  # recompute each block in the backward: less memory, ~1/3 more compute
    segment_len: int | None = None    # run each window as segments of this many tokens, the state carried (full BPTT)
    compile: bool = False             # torch.compile each block (the WKV op between its graphs) and the loss's softmax: the GPU fast path
    precision: str = "bf16"           # on a GPU: "bf16" (autocast, fp32 weights) or "fp32"; the CPU computes in fp32
    train_mode: str = "full"          # "full"; "state": only the initial WKV state; "lora": only adapters
    lora_rank: int = 16               # r of every adapter (train_mode "lora")
    lora_alpha: float = 32.0          # the adapters' output is scaled by lora_alpha / lora_rank
    lora_targets: list = field(default_factory=lambda: list(LORA_TARGETS))   # projections that get an adapter
    lora_init: str = "lora"           # "lora": B = 0; "pissa": A, B from the top-r singular vectors of W
    lora_train_small: bool = False    # also train the per-channel parameters (time_* mixes, decays, ln)
    log_every: int = 10
    val_every: int = 100
    val_batches: int = 8
    save_every: int = 100
    seed: int = 0

    def __post_init__(self):
        _check_types(self, "train")
        if self.train_mode not in TRAIN_MODES:
            raise ValueError(f"train_mode must be one of {', '.join(TRAIN_MODES)}, got {self.train_mode!r}")
        if self.lora_rank <= 0 or self.lora_alpha <= 0:
            raise ValueError(f"lora_rank and lora_alpha must be positive, got {self.lora_rank} and {self.lora_alpha}")
        unknown = [t for t in self.lora_targets if t not in LORA_TARGETS]
        if unknown or not self.lora_targets or len(set(self.lora_targets)) != len(self.lora_targets):
            raise ValueError(f"lora_targets must be distinct names among {', '.join(LORA_TARGETS)}, "
                             f"got {self.lora_targets!r}")
        if self.lora_init not in LORA_INITS:
            raise ValueError(f"lora_init must be one of {', '.join(LORA_INITS)}, got {self.lora_init!r}")
        if self.precision not in ("bf16", "fp32"):
            raise ValueError(f"precision must be 'bf16' or 'fp32', got {self.precision!r}")
        for name in ("max_steps", "batch_size", "ctx_len", "log_every", "val_every", "val_batches", "save_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"train {name} must be positive, got {getattr(self, name)}")
        if self.segment_len is not None and self.segment_len <= 0:
            raise ValueError(f"train segment_len must be positive (or null: no segments), got {self.segment_len}")
        if self.segment_len is not None and self.compile:
            raise ValueError("train segment_len cannot be combined with compile; set \"compile\": false")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return dataclass_from_dict(cls, d, "train config")

    def with_overrides(self, max_steps=None, seed=None) -> "TrainConfig":
        """The command line's --max-steps / --seed on top. --max-steps stops the run early; the lr
        schedule keeps the config's length, so a run stopped there and resumed follows the same
        schedule as one that never stopped."""
        cfg = dataclasses.replace(self)
        if max_steps is not None:
            cfg.decay_steps = cfg.decay_steps or cfg.max_steps
            cfg.max_steps = max_steps
        if seed is not None:
            cfg.seed = seed
        cfg.__post_init__()
        return cfg


@dataclass
class RunConfig:
    """A training run's config file: "model" (an RWKVConfig's fields; absent when the run starts from
    a checkpoint), "train" (TrainConfig) and the domain's own section ("text", "music" or "visual";
    the domain parses it into its own dataclass). An optional "domain" key names the domain; a run
    folder's config.json always has it."""

    domain: str
    model: dict | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    section: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict, domain: str, where="config") -> "RunConfig":
        if domain not in DOMAINS:
            raise ValueError(f"unknown domain {domain!r}; domains: {', '.join(DOMAINS)}")
        other = d.get("domain") or next((name for name in DOMAINS if name in d), domain)
        if other != domain:
            raise ValueError(f"{where} is a {other} config, not a {domain} one")
        unknown = sorted(set(d) - {"domain", "model", "train", domain})
        if unknown:
            raise ValueError(f"{where}: unknown sections {unknown}; a {domain} config has model, train and {domain}")
        try:
            if d.get("model") is not None:
                RWKVConfig.from_dict(d["model"])  # checked now; the domain may still set vocab_size
            train = TrainConfig.from_dict(d.get("train", {}))
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        section = d.get(domain, {})
        if not isinstance(section, dict):
            raise ValueError(f"{where}: the {domain} section must be a JSON object")
        return cls(domain, d.get("model"), train, section)

    @classmethod
    def load(cls, name_or_path, domain: str) -> "RunConfig":
        """A shipped training config ("text-tiny") or a JSON file, for `domain`."""
        return cls.from_dict(read_config(name_or_path), domain, where=str(name_or_path))

    def model_config(self, **overrides) -> RWKVConfig:
        if self.model is None:
            raise ValueError("the config has no \"model\" section; give one, or start from a checkpoint (--init)")
        return RWKVConfig.from_dict({**self.model, **overrides})

    def to_dict(self) -> dict:
        d = {"domain": self.domain, "train": dataclasses.asdict(self.train), self.domain: self.section}
        if self.model is not None:
            d["model"] = self.model
        return d

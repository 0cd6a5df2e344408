"""Model configuration: one dataclass, JSON presets in configs/."""
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

ARCHS = ("eagle", "finch")  # eagle = RWKV-5.2 (x052), finch = RWKV-6 (x060)
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


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
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.dim_att % self.head_size:
            raise ValueError(f"dim_att ({self.dim_att}) must be a multiple of head_size ({self.head_size})")

    @property
    def n_head(self) -> int:
        return self.dim_att // self.head_size

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RWKVConfig":
        return dataclass_from_dict(cls, d, "config")

    @classmethod
    def load(cls, name_or_path: str | Path) -> "RWKVConfig":
        """A JSON file, or the name of a preset in configs/ (e.g. "finch-1.6b")."""
        path = Path(name_or_path)
        if not path.exists():
            path = CONFIG_DIR / f"{name_or_path}.json"
        if not path.exists():
            raise FileNotFoundError(f"no config file {name_or_path!r} and no preset of that name; "
                                    f"presets: {', '.join(list_presets())}")
        d = json.loads(path.read_text())
        return cls.from_dict(d.get("model", d))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def dataclass_from_dict(cls, d: dict, what: str):
    """cls(**d), refusing keys the dataclass does not have (a typo must not silently fall back to a default)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {what} keys {unknown}; known keys: {sorted(known)}")
    return cls(**d)


def list_presets() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json") if "arch" in json.loads(p.read_text()))

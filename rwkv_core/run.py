"""A run folder: what a training run writes, and the one way every command opens a trained model.

    RUN/config.json        the run's config (RunConfig: domain, model, train and the domain's section)
    RUN/model.safetensors  weights and model config: what inference loads (a LoRA run: the base)
    RUN/adapters.safetensors  a LoRA run's adapters, loaded with the model and kept unmerged
    RUN/checkpoint.pt      everything --resume needs (model, optimizer, step, data sampler, RNGs)
    RUN/metrics.jsonl      one JSON object per logged step; RUN/loss.png its plot
    RUN/<domain files>     text: vocab_subset.json (trimmed vocabularies); music: tokenizer.json;
                           visual: visual.json (and vocab_subset.json); its projector and encoder
                           weights are in model.safetensors, under "visual."

Every file a run needs for inference is written before the first checkpoint and again at every
checkpoint, each atomically, and always before checkpoint.pt: a run killed at any moment opens,
and its inference files are never older than its checkpoint.

`Run.open(path)` takes a run folder, a run's `model.safetensors`, or any other model file (an
official `.pth`, a `.safetensors`), which is a bare model with no run files. The domains subclass
`Run` with what only they know: `TextRun` and `MusicRun` add their tokenizer, `VisualRun` the
image encoder and projector.
"""
import json
from functools import cached_property
from pathlib import Path

import torch

from .checkpoint import CheckpointError
from .config import DOMAINS, RunConfig
from .files import write_json_atomic


class Run:
    """The files of a run folder (writing) or of a trained model (reading, via `open`)."""

    CONFIG = "config.json"
    MODEL = "model.safetensors"
    ADAPTERS = "adapters.safetensors"
    CHECKPOINT = "checkpoint.pt"
    METRICS = "metrics.jsonl"
    PLOT = "loss.png"
    DEEPSPEED = "deepspeed"       # DeepSpeed's sharded checkpoints (one folder per tag)

    domain: str | None = None     # the subclass's domain; Run itself opens runs of any domain
    opens_bare_models = True      # a model file without a run folder is acceptable (text: official .pth)

    def __init__(self, folder, model_file=None):
        self.folder = Path(folder)
        self.model_file = Path(model_file) if model_file is not None else self.folder / self.MODEL
        self.is_bare = model_file is not None and self.model_file != self.folder / self.MODEL
        self.adapters = self.folder / self.ADAPTERS
        self.checkpoint = self.folder / self.CHECKPOINT
        self.metrics = self.folder / self.METRICS
        self.plot = self.folder / self.PLOT
        self.deepspeed = self.folder / self.DEEPSPEED

    def file(self, name: str) -> Path:
        return self.folder / name

    # -- reading ----------------------------------------------------------------------------------

    @classmethod
    def open(cls, path):
        """The run or model at `path`: a run folder, its model.safetensors, or a bare model file.

        Refuses, with one line, a path that does not exist, a folder without a model, and a run
        of another domain than the subclass's."""
        path = Path(path)
        if path.is_dir():
            if not (path / cls.MODEL).is_file():
                raise CheckpointError(f"{path}: not a run folder (no {cls.MODEL})")
            run = cls(path)
        elif path.is_file():
            run = cls(path.parent, path)
        else:
            raise FileNotFoundError(f"{path}: no such checkpoint file or run folder "
                                    f"(give a run folder, a .safetensors or an official .pth)")
        found = run.found_domain
        if cls.domain is not None and found != cls.domain:
            if found is None and not cls.opens_bare_models:
                raise CheckpointError(f"{path}: a {cls.domain} model needs its run folder "
                                      f"(a bare model file has no {cls.domain} files)")
            if found is not None:
                raise CheckpointError(f"{path}: a {found} run, not a {cls.domain} one "
                                      f"(use `eaglefinch {found} ...`)")
        return run

    @cached_property
    def config(self) -> RunConfig | None:
        """The run's config (config.json); None for a bare model file or a folder without one."""
        path = self.file(self.CONFIG)
        if self.is_bare or not path.is_file():
            return None
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            domain = d.get("domain") or next((name for name in DOMAINS if name in d), None) \
                or ("music" if self.file("tokenizer.json").is_file() else "text")
            return RunConfig.from_dict(d, domain, where=str(path))
        except (OSError, UnicodeDecodeError, ValueError, AttributeError) as e:
            raise CheckpointError(f"{path}: not a readable run config ({e})") from None

    @property
    def found_domain(self) -> str | None:
        """The domain the run was trained in; None for a bare model file."""
        return self.config.domain if self.config is not None else None

    @property
    def ctx_len(self) -> int | None:
        """The ctx_len the run was trained with (None for a bare model: use the model config's)."""
        return self.config.train.ctx_len if self.config is not None else None

    def load_model(self, dtype=torch.float32, device="cpu", state=None, adapters=None):
        """The RWKV of the run, in eval mode. `adapters`: a LoRA adapters file to run with, unmerged
        (default: the run's own adapters.safetensors, if it is a LoRA run; a bare model file has
        none); `state`: a file of tuned initial states. dtype None keeps the file's."""
        from .checkpoint import load_model, load_tuned_state
        from .lora import load_adapters
        model = load_model(self.model_file, dtype=dtype, device=device)
        if adapters is None and not self.is_bare and self.adapters.is_file():
            adapters = self.adapters
        if adapters is not None:
            load_adapters(model, adapters)
        if state is not None:
            load_tuned_state(model, state)
        return model.eval()

    # -- writing ----------------------------------------------------------------------------------

    def save_config(self, config: RunConfig) -> None:
        write_json_atomic(self.file(self.CONFIG), config.to_dict())

    def read_metrics(self) -> list[dict]:
        return read_metrics(self.metrics)


class MetricsLog:
    """The metrics.jsonl of a run in training, in step with its checkpoints.

    Records wait in memory until the next checkpoint (`flush`), so the file never holds steps the
    checkpoint does not: a resumed run logs those steps again. A new run replaces the folder's file
    at its first checkpoint only, so a run interrupted before it leaves the folder as it was (a
    fine-tune into the run itself included)."""

    def __init__(self, run: Run, resume: bool, step: int):
        self.run, self.pending, self.replace = run, [], not resume
        if resume and run.metrics.exists():  # forget what was logged after the checkpoint
            write_json_lines(run.metrics, [r for r in run.read_metrics() if r["step"] <= step])

    def add(self, record: dict) -> None:
        self.pending.append(record)

    def flush(self) -> None:
        if self.replace:
            write_json_lines(self.run.metrics, self.pending)
            self.replace = False
        elif self.pending:
            with open(self.run.metrics, "a", encoding="utf-8") as f:
                f.write("".join(json.dumps(r) + "\n" for r in self.pending))
        self.pending = []


def read_metrics(path) -> list[dict]:
    """The records of a metrics.jsonl; a torn last line (a run killed mid-write) is dropped."""
    lines = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except ValueError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}: line {i + 1} is not JSON") from None
    return records


def write_json_lines(path, records) -> None:
    from .files import write_text_atomic
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in records))

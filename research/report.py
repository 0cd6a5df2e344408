"""What every experiment writes: results.json (the numbers, the settings, where and when they ran),
results.md (a Markdown table a reader can paste) and plots, all into the experiment's --out folder."""
import dataclasses
import datetime
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from eaglefinch.rwkv_core.files import git_commit, write_json_atomic, write_text_atomic


def device_of(name: str) -> torch.device:
    """torch.device for --device; "cuda" without a GPU is an error that says so."""
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is available (run with --device cpu)")
    return torch.device(name)


def run_start() -> dict:
    """What a run records as it starts: the commit (so that files edited during a long run do not
    change it), the date, a clock for its duration, and the machine's load (1, 5, 15-minute averages:
    a shared machine's timings say how busy it was)."""
    return {"commit": git_commit(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "clock": time.monotonic(), "load": os.getloadavg()}


def run_options(args) -> dict:
    """The options that decide what each run of an experiment computes: all but where the results go
    (--out), how many seeds there are (each run names its own) and the bookkeeping the CLI adds."""
    skip = INTERNAL_OPTIONS | {"out", "seeds"}
    return plain({k: v for k, v in vars(args).items() if k not in skip})


def resumable(args, out: Path, name: str, compute, setting) -> dict:
    """One run's record (a JSON-able dict): `compute()`, written to out/runs/<name>.json as soon as it
    is done, or read back from there when an earlier start of the experiment with the same options
    and the same `setting` (the scale's settings as the run uses them: a dict or a dataclass) wrote
    it. An experiment stopped midway (a time limit, Ctrl-C) and started again computes only the runs
    it lacks; a record made under other options, or before the scale's settings were edited, is
    computed again."""
    path = out / "runs" / f"{name}.json"
    options = {**run_options(args), "setting": plain(setting)}
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("options") == options:
            return saved["record"]
    record = json.loads(json.dumps(compute()))   # as it reads back: lists, not tuples
    path.parent.mkdir(exist_ok=True)
    write_json_atomic(path, {"options": options, "record": record})
    return record


def plain(value):
    """`value` as it reads back from JSON (dataclasses as dicts, tuples as lists, the rest as str)."""
    def default(v):
        return dataclasses.asdict(v) if dataclasses.is_dataclass(v) else str(v)
    return json.loads(json.dumps(value, default=default))


INTERNAL_OPTIONS = {"func", "experiment_module", "started", "domain", "debug", "experiment"}


def command_line(args) -> str:
    """The command that repeats this run, rebuilt from its parsed options (sys.argv may be a test
    runner's): `eaglefinch research EXPERIMENT --out DIR --device cpu ...`, every option spelled out."""
    parts = ["eaglefinch", "research", args.experiment]
    for key, value in vars(args).items():
        if key in INTERNAL_OPTIONS or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        values = value if isinstance(value, (list, tuple)) else [value]
        parts += [flag] if value is True else [flag, *map(str, values)]
    return " ".join(parts)


def environment(args) -> dict:
    """Where and when: device, date, commit, versions, the command line, the common options, the
    run's duration so far and the load at its start and now. `args.started` is `run_start()`'s
    record (the command line sets it; without it, now)."""
    start = getattr(args, "started", None) or run_start()
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return {"experiment": args.experiment, "scale": args.scale, "seeds": args.seeds, "device": device,
            "date": start["date"], "commit": start["commit"], "seconds": round(time.monotonic() - start["clock"], 1),
            "load_average": {"start": list(start["load"]), "end": list(os.getloadavg())},
            "torch": torch.__version__, "python": platform.python_version(), "command": command_line(args)}


def mean_spread(values) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value) of a list of floats."""
    values = list(values)
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def format_mean_spread(values, digits: int = 4) -> str:
    mean, spread = mean_spread(values)
    return f"{mean:.{digits}f} ± {spread:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


# two-sided 95% quantiles of Student's t by degrees of freedom (beyond 30: the normal's)
T_95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def t_95(dof: int) -> float:
    """The 95% two-sided t quantile for `dof` degrees of freedom (the table's next lower entry: wider)."""
    return 1.96 if dof > 30 else T_95[max(k for k in T_95 if k <= dof)]


def paired_difference(values, reference) -> dict:
    """Mean of values[i] - reference[i] over seeds (the two runs of a seed share its data order and,
    where they can, its initial weights) with its 95% confidence interval (Student's t), and a
    verdict: "lower" or "higher" when the interval excludes 0, "within noise" when it does not,
    "one seed" when there is no spread to judge by."""
    diffs = [a - b for a, b in zip(values, reference, strict=True)]
    mean, spread = mean_spread(diffs)
    if len(diffs) < 2:
        return {"mean": mean, "low": None, "high": None, "verdict": "one seed"}
    half = t_95(len(diffs) - 1) * spread / math.sqrt(len(diffs))
    verdict = "within noise" if abs(mean) <= half else ("lower" if mean < 0 else "higher")
    return {"mean": mean, "low": mean - half, "high": mean + half, "verdict": verdict}


def format_difference(d: dict, digits: int = 3) -> str:
    """'+0.012 [+0.004, +0.020] higher' (the mean, its 95% interval, the verdict)."""
    if d["low"] is None:
        return f"{d['mean']:+.{digits}f} (one seed)"
    return f"{d['mean']:+.{digits}f} [{d['low']:+.{digits}f}, {d['high']:+.{digits}f}] {d['verdict']}"


def claim(text: str, values, reference, expect: str) -> dict:
    """A claim judged on per-seed results: `values` against `reference` (paired by seed), the claim
    holding when the difference is `expect` ("lower" or "higher"). Verdict: "supported" when the
    95% interval lies on that side of 0, "not supported" when it lies on the other, else "not
    decidable at this scale" (the difference is within the seeds' noise, or there is one seed)."""
    d = paired_difference(values, reference)
    verdict = ("supported" if d["verdict"] == expect else
               "not supported" if d["verdict"] in ("lower", "higher") else "not decidable at this scale")
    return {"claim": text, "expect": expect, "difference": d, "verdict": verdict}


def claims_markdown(claims) -> str:
    """One line per claim: the verdict, the claim, and the difference that decided it."""
    return "\n".join(f"- **{c['verdict']}**: {c['claim']} (difference {format_difference(c['difference'])})"
                     for c in claims) + "\n"


def markdown_table(headers, rows) -> str:
    """A GitHub Markdown table; floats with 4 significant digits, everything else as str()."""
    def cell(value):
        if isinstance(value, float):
            return "nan" if math.isnan(value) else f"{value:.4g}"
        return str(value)
    lines = ["| " + " | ".join(map(str, headers)) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, out: Path, name: str) -> str:
    """Save a figure as out/name (a .png), close it, and return the file name for results.json."""
    plt = pyplot()
    fig.tight_layout()
    fig.savefig(Path(out) / name, dpi=110)
    plt.close(fig)
    return name


def write_report(out, args, title: str, results: dict, table: str, plots=(), notes: str = "") -> Path:
    """Write out/results.json ({"environment", "results", "plots"}) and out/results.md (title, the
    environment in one line, the table, the notes, the plots linked). Returns the folder."""
    out = Path(out)
    env = environment(args)
    write_json_atomic(out / "results.json", {"environment": env, "results": results, "plots": list(plots)})
    where = (f"{env['device']}, torch {env['torch']}, {env['date']}, commit {env['commit']}, seeds {env['seeds']}, "
             f"scale {env['scale']}, {env['seconds']:.0f} s (load average {env['load_average']['start'][0]:.1f} at "
             f"the start, {env['load_average']['end'][0]:.1f} at the end)")
    md = [f"# {title}", "", f"`{env['command']}`", "", where, "", table]
    if notes:
        md += [notes.strip(), ""]
    md += [f"![{name}]({name})" for name in plots]
    write_text_atomic(out / "results.md", "\n".join(md) + "\n")
    return out

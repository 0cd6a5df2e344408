"""`eaglefinch research efficiency`: time and memory against sequence length T for Eagle, Finch and the
transformer baseline at one width and depth: the prefill of T tokens, then one decode step at position
T (RWKV from its carried state, the transformer from its KV cache), and the bytes carried from token
to token (the RWKV state, the KV cache). A log-log plot with slopes fitted over the longer half of the
lengths: 1 is linear, 2 quadratic, 0 constant.

Memory on a GPU: torch.cuda.max_memory_allocated during the call, less the memory in use before the
prefill (the weights and the input). On the CPU: the growth of the process's peak resident set
(Linux's VmHWM, reset through /proc/self/clear_refs; freed heap memory is handed back to the system
with glibc's malloc_trim first), over the same baseline; elsewhere it is not measured. Both decode
numbers include the state or cache that the prefill left, which is what grows for the transformer.
"""
import ctypes
import ctypes.util
import dataclasses
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from eaglefinch.rwkv_core.cli import int_at_least

from .cli import choice_list, int_list
from .mqar import cpu_flush_denormal
from .report import device_of, markdown_table, pyplot, save_figure, write_report
from .transformer import ARCHS, KVCache, Transformer, build_model

MB = 2 ** 20


@dataclasses.dataclass(frozen=True)
class EfficiencySettings:
    lengths: tuple          # T: tokens prefilled; the decode step is at position T
    width: int
    n_layer: int
    head_size: int
    vocab_size: int
    prefill_repeats: int    # timed calls (median), after one untimed warmup call
    decode_repeats: int     # timed decode steps from the same state (median), after three warmup steps


SCALES = {
    # 2 CPU cores, fp32, a minute or two (RESEARCH.md has the measured time)
    "tiny": EfficiencySettings(lengths=(256, 512, 1024, 2048, 4096, 8192, 16384), width=128, n_layer=2, head_size=64,
                               vocab_size=1024, prefill_repeats=3, decode_repeats=15),
    # one GPU, bf16: a Finch-0.17B-sized model (12 layers, width 768, the World vocabulary)
    "small": EfficiencySettings(lengths=(256, 512, 1024, 2048, 4096, 8192, 16384, 32768), width=768, n_layer=12,
                                head_size=64, vocab_size=65536, prefill_repeats=5, decode_repeats=50),
}
METRICS = {  # key: (what, unit)
    "prefill_s": ("prefill of T tokens", "s"),
    "decode_s": ("one decode step at position T", "s"),
    "prefill_peak_bytes": ("peak memory of the prefill", "MB"),
    "decode_peak_bytes": ("peak memory of the decode step (with the state or cache)", "MB"),
    "state_bytes": ("state or KV cache carried after T tokens", "MB"),
}


def prefill(model, idx):
    """The state (RWKV) or KV cache (transformer, room for one more token) after the tokens idx [B, T]."""
    if isinstance(model, Transformer):
        return model.prefill(idx, capacity=idx.shape[1] + 1)[1]
    return model(idx)[1]


def decode(model, token, state):
    """One step: the logits after token [B] and the next state or cache (the given one stays usable)."""
    if isinstance(model, Transformer):
        return model.decode(token, state)
    logits, state = model(token[:, None], state)
    return logits[:, 0], state


def state_bytes(state) -> int:
    if isinstance(state, KVCache):
        return state.nbytes
    return sum(t.numel() * t.element_size() for t in state.tensors)


def median_seconds(fn, repeats: int, warmup: int, device) -> tuple[float, list]:
    """The median wall time of fn() over `repeats` calls after `warmup` untimed ones, and every time."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class CPUMemory:
    """The process's resident memory, and its peak since the last reset (Linux with glibc only)."""

    def __init__(self):
        path = ctypes.util.find_library("c")
        self.libc = ctypes.CDLL(path) if path else None
        try:
            self.reset_peak()
            self.available = self.libc is not None and hasattr(self.libc, "malloc_trim") and self.read("VmHWM") > 0
        except OSError:
            self.available = False

    def read(self, field: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024   # kB
        return 0

    def reset_peak(self):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")   # resets VmHWM to the current resident set

    def in_use(self) -> int:
        self.libc.malloc_trim(0)   # freed heap memory goes back to the system, so it is not reused unseen
        return self.read("VmRSS")

    def peak_during(self, fn):
        self.libc.malloc_trim(0)
        self.reset_peak()
        result = fn()
        return result, self.read("VmHWM")


class GPUMemory:
    available = True

    def __init__(self, device):
        self.device = device

    def in_use(self) -> int:
        torch.cuda.synchronize(self.device)
        return torch.cuda.memory_allocated(self.device)

    def peak_during(self, fn):
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        result = fn()
        torch.cuda.synchronize(self.device)
        return result, torch.cuda.max_memory_allocated(self.device)


@torch.no_grad()
def measure(model, T: int, settings: EfficiencySettings, device, memory) -> dict:
    """Times and memory of one model at one length (input: random token ids, batch 1)."""
    generator = torch.Generator().manual_seed(T)
    idx = torch.randint(0, settings.vocab_size, (1, T), generator=generator).to(device)
    token = torch.randint(0, settings.vocab_size, (1,), generator=generator).to(device)
    prefill_s, prefill_times = median_seconds(lambda: prefill(model, idx), settings.prefill_repeats, 1, device)
    state = prefill(model, idx)
    decode_s, decode_times = median_seconds(lambda: decode(model, token, state), settings.decode_repeats, 3, device)
    result = {"prefill_s": prefill_s, "decode_s": decode_s, "state_bytes": state_bytes(state),
              "prefill_times": prefill_times, "decode_times": decode_times,
              "prefill_peak_bytes": None, "decode_peak_bytes": None}
    if memory.available:
        del state
        baseline = memory.in_use()
        state, peak = memory.peak_during(lambda: prefill(model, idx))
        result["prefill_peak_bytes"] = peak - baseline
        _, peak = memory.peak_during(lambda: decode(model, token, state))
        result["decode_peak_bytes"] = peak - baseline
    return result


def fitted_slope(lengths, values) -> float:
    """The slope of log(value) against log(T) over the longer half of the lengths (at least 3 points),
    where per-call overheads matter least; nan where fewer than 2 positive values remain."""
    points = [(T, v) for T, v in zip(lengths, values) if v is not None and v > 0]
    points = points[min(len(points) // 2, max(len(points) - 3, 0)):]
    if len(points) < 2:
        return float("nan")
    return float(np.polyfit(np.log([T for T, _ in points]), np.log([v for _, v in points]), 1)[0])


def add_arguments(parser):
    parser.add_argument("--lengths", type=int_list, help="sequence lengths T, comma-separated (default: the scale's)")
    parser.add_argument("--width", type=int_at_least(2), help="model width n_embd (default: the scale's)")
    parser.add_argument("--archs", type=choice_list(ARCHS, "model"), default=ARCHS, help=f"models, comma-separated (default: {','.join(ARCHS)})")


def run(args, out: Path):
    settings = SCALES[args.scale]
    settings = dataclasses.replace(settings, **{k: v for k, v in {"lengths": args.lengths, "width": args.width}.items()
                                                if v is not None})
    if settings.width < 2 or settings.width % min(settings.head_size, settings.width):
        raise ValueError(f"--width: {settings.width} is not a multiple of the head size {settings.head_size}")
    device = device_of(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    memory = GPUMemory(device) if device.type == "cuda" else CPUMemory()
    lengths = sorted(set(settings.lengths))
    measurements, params = {}, {}
    with cpu_flush_denormal(), tqdm(total=len(args.archs) * len(lengths), desc="efficiency", unit="length",
                                    dynamic_ncols=True) as bar:
        for arch in args.archs:
            torch.manual_seed(0)
            model = build_model(arch, settings.vocab_size, settings.n_layer, settings.width,
                                settings.head_size).to(device=device, dtype=dtype).eval()
            params[arch] = sum(p.numel() for p in model.parameters())
            for T in lengths:
                bar.set_postfix(model=arch, T=T, refresh=True)
                measurements[(arch, T)] = measure(model, T, settings, device, memory)
                bar.update(1)
            del model

    slopes = {arch: {m: fitted_slope(lengths, [measurements[(arch, T)][m] for T in lengths]) for m in METRICS}
              for arch in args.archs}
    rows = []
    for arch in args.archs:
        for T in lengths:
            r = measurements[(arch, T)]
            rows.append([arch, T, r["prefill_s"] * 1e3, r["decode_s"] * 1e3, megabytes(r["prefill_peak_bytes"]),
                         megabytes(r["decode_peak_bytes"]), megabytes(r["state_bytes"])])
    headers = ["model", "T", "prefill ms", "decode ms at T", "prefill peak MB", "decode peak MB", "state/cache MB"]
    table = markdown_table(headers, rows) + "\nFitted slopes of log(value) against log(T), longer half of the lengths:\n\n"
    table += markdown_table(["model", "params", *[METRICS[m][0] for m in METRICS]],
                            [[arch, params[arch], *[f"{round(slopes[arch][m], 2) + 0.0:.2f}" for m in METRICS]]
                             for arch in args.archs])
    plot = plot_scaling(measurements, slopes, lengths, args.archs, out)
    memory_note = ("GPU memory: torch.cuda.max_memory_allocated during the call, less the memory allocated before the prefill"
                   if device.type == "cuda" else
                   "CPU memory: growth of the process's peak resident set (VmHWM) during the call over the resident set "
                   "before the prefill, after handing freed heap memory back (malloc_trim); it includes allocator and "
                   "page granularity, so small values are noisy" if memory.available else
                   "CPU memory: not measured on this system (needs Linux /proc/self/clear_refs and glibc)")
    notes = (f"Settings: {dataclasses.asdict(settings)}, dtype {str(dtype).removeprefix('torch.')}, batch 1. "
             f"Times are medians of {settings.prefill_repeats} prefills (after one warmup) and {settings.decode_repeats} "
             "decode steps from the same state (after three). The decode step is the token at position T, after the "
             f"prefill. {memory_note}. State/cache: the bytes carried from token to token (RWKV: token-shift and WKV "
             "states of every layer; transformer: keys and values of T positions). No training: --seeds is not used.")
    results = {"settings": dataclasses.asdict(settings), "dtype": str(dtype), "params": params,
               "slopes": slopes, "memory_measure": memory_note,
               "measurements": [{"arch": arch, "T": T, **measurements[(arch, T)]} for arch in args.archs for T in lengths]}
    write_report(out, args, "Efficiency: time and memory against sequence length", results, table, [plot], notes)


def megabytes(n):
    return float("nan") if n is None else n / MB


def plot_scaling(measurements, slopes, lengths, archs, out: Path) -> str:
    """One log-log panel per metric, one line per model, the fitted slope in the legend."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5))
    for ax, (metric, (what, unit)) in zip(axes.flat, METRICS.items()):
        scale = 1 / MB if unit == "MB" else 1.0
        for arch in archs:
            points = [(T, measurements[(arch, T)][metric]) for T in lengths]
            points = [(T, v * scale) for T, v in points if v is not None and v > 0]
            if points:
                ax.plot(*zip(*points), marker="o", label=f"{arch} (slope {slopes[arch][metric]:.2f})")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(what, fontsize=10)
        ax.set_xlabel("T (tokens)")
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    axes.flat[-1].axis("off")
    return save_figure(fig, out, "efficiency.png")

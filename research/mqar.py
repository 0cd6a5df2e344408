"""`eaglefinch research mqar`: multi-query associative recall (MQAR; Zoology, Arora et al. 2023, and
the Based paper), the task of the Eagle/Finch paper's recall figure: accuracy against sequence length
and model width for Eagle, Finch and a transformer of the same width and depth.

A sequence is `num_pairs` key-value pairs, then each key once more as a query, in a random order at
random positions among filler tokens; at a query the model must name the value paired with that key.
Token 0 is the filler, keys come from the lower half of the other ids and values from the upper half.
The queries are spread uniformly over the rest of the sequence (Zoology draws their distances from a
power law instead), and the number of pairs grows with the length, as in Zoology's figure (length / 16
at the small scale). Only the answer positions carry a loss and count in the accuracy.
"""
import contextlib
import dataclasses
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from eaglefinch.rwkv_core import RWKV
from eaglefinch.rwkv_core.cli import int_at_least

from .cli import add_steps_argument, choice_list, int_list
from .report import (device_of, format_mean_spread, markdown_table, mean_spread, pyplot, resumable,
                     save_figure, write_report)
from .transformer import ARCHS, build_model

IGNORE = -100   # the target of every position that is not a query (F.cross_entropy's ignore_index)


@dataclasses.dataclass(frozen=True)
class MQARSettings:
    lengths: tuple          # sequence lengths (one panel each)
    widths: tuple           # model widths (n_embd; the x axis)
    pairs_divisor: int      # key-value pairs per sequence = length // pairs_divisor (unless --pairs)
    vocab_size: int
    n_layer: int
    head_size: int
    steps: int
    batch_size: int
    lr: float
    test_sequences: int


SCALES = {
    # 2 CPU cores, under 10 minutes for 3 seeds (RESEARCH.md has the measured time)
    "tiny": MQARSettings(lengths=(32, 64), widths=(16, 32), pairs_divisor=8, vocab_size=64, n_layer=2,
                         head_size=16, steps=300, batch_size=32, lr=3e-3, test_sequences=256),
    # the GPU setting: Zoology's lengths, widths, vocabulary and pairs (length / 16), 2 layers
    "small": MQARSettings(lengths=(64, 128, 256, 512), widths=(64, 128, 256, 512), pairs_divisor=16,
                          vocab_size=8192, n_layer=2, head_size=64, steps=2000, batch_size=64, lr=1e-3,
                          test_sequences=1000),
}


def mqar_batch(batch_size: int, seq_len: int, num_pairs: int, vocab_size: int, generator=None):
    """(inputs, targets), both [batch_size, seq_len] int64: the pairs k1 v1 ... kN vN, then each key
    once more at a random position of the rest (filler 0 between); targets are the paired value at
    each query and IGNORE everywhere else."""
    num_keys = (vocab_size - 1) // 2
    check_task(seq_len, num_pairs, vocab_size)
    B, N, T = batch_size, num_pairs, seq_len

    def random_order(rows, n):  # a random permutation of range(n) per row
        return torch.rand(rows, n, generator=generator).argsort(dim=1)

    keys = random_order(B, num_keys)[:, :N] + 1                                   # distinct, 1..num_keys
    values = torch.randint(num_keys + 1, vocab_size, (B, N), generator=generator)
    inputs = torch.zeros(B, T, dtype=torch.long)
    inputs[:, 0:2 * N:2] = keys
    inputs[:, 1:2 * N:2] = values
    query_positions = random_order(B, T - 2 * N)[:, :N] + 2 * N
    order = random_order(B, N)
    inputs.scatter_(1, query_positions, keys.gather(1, order))
    targets = torch.full((B, T), IGNORE, dtype=torch.long)
    targets.scatter_(1, query_positions, values.gather(1, order))
    return inputs, targets


def check_task(seq_len: int, num_pairs: int, vocab_size: int) -> None:
    """One clear error for a task that cannot be built."""
    num_keys = (vocab_size - 1) // 2
    if num_pairs < 1 or num_pairs > num_keys:
        raise ValueError(f"MQAR: {num_pairs} key-value pairs need a vocabulary of at least {2 * num_pairs + 1} "
                         f"(got {vocab_size}: {num_keys} keys)")
    if 3 * num_pairs > seq_len:
        raise ValueError(f"MQAR: {num_pairs} pairs and their queries need a sequence of at least "
                         f"{3 * num_pairs} tokens, got {seq_len}")


def logits_of(model, inputs):
    """[B, T, V] logits of whole sequences, from an RWKV model (which also returns its state) or the transformer."""
    return model(inputs)[0] if isinstance(model, RWKV) else model(inputs)


def recall_loss(model, inputs, targets):
    """Cross-entropy on the answer positions only."""
    logits = logits_of(model, inputs)
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE)


@torch.no_grad()
def query_accuracy(model, inputs, targets, batch_size: int = 64) -> float:
    """The fraction of queries whose most likely token is the paired value."""
    model.eval()
    correct = total = 0
    for i in range(0, len(inputs), batch_size):
        x, y = inputs[i:i + batch_size], targets[i:i + batch_size]
        predicted = logits_of(model, x).argmax(-1)
        at_query = y != IGNORE
        correct += (predicted[at_query] == y[at_query]).sum().item()
        total += at_query.sum().item()
    model.train()
    return correct / total


@contextlib.contextmanager
def cpu_flush_denormal():
    """The CPU flushes denormal floats to zero for the duration: the RWKV decays exp(-exp(d)) produce
    them, and arithmetic on them runs many times slower (a training step 2-20x). The change to the
    numbers is below 1e-38."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def train_recall(arch: str, width: int, seq_len: int, num_pairs: int, seed: int, settings: MQARSettings,
                 device, bar=None) -> dict:
    """Train one model on MQAR from seed `seed` and return its test accuracy and size. Every model of a
    seed sees the same batches and the same test set. The same optimizer for all three models: AdamW
    without weight decay, a linear warmup over the first tenth of the steps, a cosine decay to zero."""
    torch.manual_seed(seed)
    model = build_model(arch, settings.vocab_size, settings.n_layer, width, settings.head_size).to(device)
    data = torch.Generator().manual_seed(seed)
    test_inputs, test_targets = mqar_batch(settings.test_sequences, seq_len, num_pairs, settings.vocab_size,
                                           torch.Generator().manual_seed(10_000 + seed))
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, betas=(0.9, 0.99), weight_decay=0.0)
    warmup = max(settings.steps // 10, 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, 1.0) * 0.5 * (1 + math.cos(math.pi * step / settings.steps)))
    for _ in range(settings.steps):
        inputs, targets = mqar_batch(settings.batch_size, seq_len, num_pairs, settings.vocab_size, data)
        loss = recall_loss(model, inputs.to(device), targets.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(model=f"{arch} C={width} T={seq_len}", loss=f"{loss.item():.3f}", refresh=False)
    accuracy = query_accuracy(model, test_inputs.to(device), test_targets.to(device))
    return {"accuracy": accuracy, "final_train_loss": loss.item(), "params": sum(p.numel() for p in model.parameters())}


def add_arguments(parser):
    parser.add_argument("--lengths", type=int_list, help="sequence lengths, comma-separated (default: the scale's)")
    parser.add_argument("--widths", type=int_list, help="model widths n_embd, comma-separated (default: the scale's)")
    parser.add_argument("--pairs", type=int_at_least(1),
                        help="key-value pairs per sequence at every length (default: length / the scale's divisor, 8 tiny, 16 small)")
    parser.add_argument("--vocab", type=int_at_least(3), help="vocabulary size: filler, keys, values (default: the scale's)")
    add_steps_argument(parser)
    parser.add_argument("--test-sequences", type=int_at_least(1), help="held-out sequences per model (default: the scale's)")
    parser.add_argument("--archs", type=choice_list(ARCHS, "model"), default=ARCHS,
                        help=f"models, comma-separated (default: {','.join(ARCHS)})")


def settings_of(args) -> MQARSettings:
    """The scale's settings with the command line's overrides."""
    s = SCALES[args.scale]
    overrides = {"lengths": args.lengths, "widths": args.widths, "vocab_size": args.vocab, "steps": args.steps,
                 "test_sequences": args.test_sequences}
    return dataclasses.replace(s, **{k: v for k, v in overrides.items() if v is not None})


def run(args, out: Path):
    settings = settings_of(args)
    device = device_of(args.device)
    pairs = {T: args.pairs or max(T // settings.pairs_divisor, 1) for T in settings.lengths}
    for T in settings.lengths:
        check_task(T, pairs[T], settings.vocab_size)
    for C in settings.widths:
        if C % min(settings.head_size, C):
            raise ValueError(f"--widths: {C} is not a multiple of the head size {settings.head_size}")
    seeds = list(range(args.seeds))
    runs = [(arch, C, T, seed) for T in settings.lengths for C in settings.widths for arch in args.archs for seed in seeds]
    results = []
    with cpu_flush_denormal(), tqdm(total=len(runs) * settings.steps, desc="mqar", unit="step", dynamic_ncols=True) as bar:
        for arch, C, T, seed in runs:
            before = bar.n
            r = resumable(args, out, f"{arch}-C{C}-T{T}-seed{seed}",
                          lambda: train_recall(arch, C, T, pairs[T], seed, settings, device, bar), settings)
            bar.update(settings.steps - (bar.n - before))   # a run read back from its file counts its steps too
            results.append({"arch": arch, "width": C, "seq_len": T, "num_pairs": pairs[T], "seed": seed, **r})

    rows, summary = [], []
    for T in settings.lengths:
        for C in settings.widths:
            for arch in args.archs:
                runs_here = [r for r in results if (r["arch"], r["width"], r["seq_len"]) == (arch, C, T)]
                accuracies = [r["accuracy"] for r in runs_here]
                mean, spread = mean_spread(accuracies)
                summary.append({"arch": arch, "width": C, "seq_len": T, "num_pairs": pairs[T],
                                "accuracy_mean": mean, "accuracy_std": spread, "params": runs_here[0]["params"]})
                rows.append([T, pairs[T], C, arch, runs_here[0]["params"], format_mean_spread(accuracies, 3)])
    table = markdown_table(["seq len", "pairs", "width", "model", "params", "query accuracy"], rows)
    plot = plot_accuracy(summary, settings, args.archs, out)
    notes = (f"Settings: {dataclasses.asdict(settings)}; pairs per length {pairs}. Accuracy over the answer "
             f"positions of {settings.test_sequences} held-out sequences per seed: mean ± sample standard "
             f"deviation over {len(seeds)} seeds. Chance is 1 / {settings.vocab_size - 1 - (settings.vocab_size - 1) // 2} "
             "(a uniform guess among the values).")
    write_report(out, args, "MQAR: query accuracy against sequence length and model width",
                 {"settings": dataclasses.asdict(settings), "pairs": {str(T): n for T, n in pairs.items()},
                  "summary": summary, "runs": results}, table, [plot], notes)


def plot_accuracy(summary, settings: MQARSettings, archs, out: Path) -> str:
    """One panel per sequence length: accuracy against model width, one line per model (the paper's figure)."""
    plt = pyplot()
    lengths = settings.lengths
    fig, axes = plt.subplots(1, len(lengths), figsize=(3.6 * len(lengths), 3.4), sharey=True, squeeze=False)
    for ax, T in zip(axes[0], lengths):
        for arch in archs:
            points = [s for s in summary if s["arch"] == arch and s["seq_len"] == T]
            ax.errorbar([s["width"] for s in points], [s["accuracy_mean"] for s in points],
                        yerr=[s["accuracy_std"] for s in points], marker="o", capsize=3, label=arch)
        ax.set_xscale("log", base=2)
        ax.set_xticks(settings.widths, [str(C) for C in settings.widths])
        ax.set_title(f"sequence length {T} ({points[0]['num_pairs']} pairs)")
        ax.set_xlabel("model width")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("query accuracy")
    axes[0][-1].legend()
    return save_figure(fig, out, "mqar_accuracy.png")

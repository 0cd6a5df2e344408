"""`eaglefinch research abc`: Eagle against Finch on ABC music notation, bits per byte, over seeds.

The paper's music setting as `eaglefinch music abc` runs it (music/abc.py: music21's ASCII tunes as
bytes, 5% of the tunes held out by a hash of their text, both architectures at one shape, on the
same data for the same steps), repeated for each seed; per seed both get the same window order
and the same random stream for their initial weights. Seed 0 at --scale tiny is exactly
`eaglefinch music abc --config abc-tiny`.
"""
import dataclasses
import statistics
import tempfile
from pathlib import Path

from eaglefinch.music.abc import ARCHS, compare_archs, write_abc_data
from eaglefinch.rwkv_core import RunConfig
from eaglefinch.rwkv_core.data import TokenDataset

from .cli import add_steps_argument
from .lm import runs_bar, seeds_of
from .report import (claim, claims_markdown, format_difference, format_mean_spread, markdown_table,
                     paired_difference, pyplot, resumable, save_figure, write_report)

SCALES = {
    # the shipped abc-tiny as it is (2 layers, width 128, 300 steps of 8 x 256 bytes); 2 models x 3 seeds:
    # 526 s on 2 CPU cores of a busy shared machine (RESEARCH.md)
    "tiny": {"config": "abc-tiny", "model": {}, "train": {}, "eval_tokens": None},
    # one GPU: 6 layers x 512, 3000 steps of 16 x 1024 bytes (49M bytes, 13 passes over the 3.8M training bytes)
    "small": {"config": "abc-tiny",
              "model": dict(n_layer=6, n_embd=512, head_size=64, mix_lora_dim=32, decay_lora_dim=64, ctx_len=1024),
              "train": dict(max_steps=3000, batch_size=16, ctx_len=1024, lr_init=6e-4, lr_final=6e-5,
                            warmup_steps=100, val_every=500, save_every=3000),
              "eval_tokens": None},
}


def add_arguments(parser):
    add_steps_argument(parser)
    parser.add_argument("--data", type=Path, help="byte shards written by `eaglefinch music abc` (default: written "
                        "from music21's tunes into a temporary folder)")


def run_config(setting: dict) -> RunConfig:
    """The setting's config: its shipped config with the setting's model and train fields on top."""
    base = RunConfig.load(setting["config"], "music")
    return RunConfig("music", {**base.model, **setting["model"]}, dataclasses.replace(base.train, **setting["train"]),
                     base.section)


def run(args, out):
    setting = SCALES[args.scale]
    config = run_config(setting)
    seeds = seeds_of(args)
    per_arch = {arch: {"bits_per_byte": [], "train_loss": []} for arch in ARCHS}
    with tempfile.TemporaryDirectory(prefix="eaglefinch-abc-") as work:
        data = args.data or Path(work) / "data"
        if args.data is None:
            write_abc_data(data)
        splits = {s: TokenDataset(data, s) for s in ("train", "val")}
        with runs_bar(len(ARCHS) * len(seeds), "abc") as bar:
            for seed in seeds:
                for arch in ARCHS:
                    bar.set_postfix_str(f"{arch}, seed {seed}")
                    def one_run():
                        r = compare_archs(config, data, Path(work) / f"seed{seed}", max_steps=args.steps, seed=seed,
                                          eval_tokens=setting["eval_tokens"], archs=(arch,), progress=False,
                                          device=args.device)
                        return {**r[arch], "steps": r["steps"]}
                    # keyed by the shipped config too: the setting only names it
                    r = resumable(args, out, f"{arch}-seed{seed}", one_run, [setting, config.to_dict()])
                    steps = r["steps"]
                    per_arch[arch]["params"] = r["params"]
                    per_arch[arch]["bits_per_byte"].append(r["bits_per_byte"])
                    per_arch[arch]["train_loss"].append(r["train_loss"])
                    per_arch[arch]["scored_bytes"] = r["bytes"]
                    bar.update(1)
    bpb = {arch: r["bits_per_byte"] for arch, r in per_arch.items()}
    results = {"setting": setting, "config": config.to_dict(), "steps": steps, "seeds": seeds,
               "data": {"corpus": "music21 ABC tunes (ASCII), bytes", "source": str(args.data or "music21"),
                        **{f"{s}_bytes": len(d) for s, d in splits.items()}},
               "models": per_arch, "finch_minus_eagle": paired_difference(bpb["finch"], bpb["eagle"]),
               "claims": [claim("Finch models ABC notation better than Eagle (fewer bits per byte)", bpb["finch"],
                                bpb["eagle"], "lower")]}
    rows = [[arch, f"{r['params']:,}", format_mean_spread(r["bits_per_byte"]),
             format_difference(results["finch_minus_eagle"]) if arch == "finch" else "",
             format_mean_spread(r["train_loss"])] for arch, r in per_arch.items()]
    table = markdown_table(["model", "params", "held-out bits/byte", "minus Eagle's (95% interval)",
                            "train loss at the last step (nats/byte)"], rows)
    notes = (f"{results['steps']} steps of {config.train.batch_size} x {config.train.ctx_len} bytes; "
             f"{per_arch['finch']['scored_bytes']:,} held-out bytes scored in windows of {config.train.ctx_len}. "
             "Mean ± standard deviation over seeds; the difference paired by seed, with its 95% interval.\n\n"
             + claims_markdown(results["claims"]))
    write_report(out, args, "ABC notation: Eagle against Finch", results, table, [plot_seeds(results, out)], notes)


def plot_seeds(results, out) -> str:
    """Each seed's Eagle and Finch joined by a line (the comparison is paired), and the means."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    bpb = [results["models"][arch]["bits_per_byte"] for arch in ARCHS]
    for seed, pair in zip(results["seeds"], zip(*bpb)):
        ax.plot(range(len(ARCHS)), pair, "o-", color="gray", alpha=0.6, ms=4)
    ax.plot(range(len(ARCHS)), [statistics.fmean(v) for v in bpb], "s-", color="black", ms=7, label="mean")
    ax.set_xticks(range(len(ARCHS)), ARCHS)
    ax.set_xlim(-0.5, len(ARCHS) - 0.5)
    ax.set_ylabel("held-out bits per byte")
    ax.set_title(f"ABC, {results['steps']} steps; gray: one seed")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    return save_figure(fig, out, "abc.png")

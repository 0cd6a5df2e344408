"""`eaglefinch research <experiment> --out DIR [--device cpu|cuda] [--scale tiny|small] [--seeds N]`.

Each experiment is a module of this package with `add_arguments(parser)` (its own options, if any;
the option types and options they share are here) and `run(args, out: Path)`, which trains and
measures and then writes its report (`report.write_report`).
"""
import argparse
from importlib import import_module
from pathlib import Path

from eaglefinch.rwkv_core.cli import int_at_least

EXPERIMENTS = {  # command: (module, one line of help)
    "ablation": ("ablation", "Finch without token shift, with static shift or decay, Eagle, head sizes: held-out loss"),
    "mqar": ("mqar", "multi-query associative recall: accuracy against sequence length and width, Eagle, Finch, transformer"),
    "longctx": ("longctx", "Eagle and Finch trained at ctx T: held-out loss by position up to 8 x T"),
    "efficiency": ("efficiency", "time and peak memory against sequence length (prefill, then decode at T): Eagle, Finch, a KV-cache transformer"),
    "lora-rank": ("lora_rank", "the decay-LoRA and ddlerp-LoRA dimensions swept: held-out loss against rank"),
    "abc": ("abc", "Eagle against Finch on ABC music notation, bits per byte, over seeds"),
}


def add_commands(parser, common):
    experiments = parser.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    for name, (module, help_text) in EXPERIMENTS.items():
        sub = experiments.add_parser(name, help=help_text, description=help_text, parents=[common])
        sub.add_argument("--out", required=True, type=Path, help="folder for results.json, results.md and the plots")
        sub.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to train and measure (default cpu)")
        sub.add_argument("--scale", choices=("tiny", "small"), default="tiny",
                         help="tiny: minutes on a laptop CPU; small: the GPU setting (default tiny)")
        sub.add_argument("--seeds", type=int_at_least(1), default=3, help="seeds per variant (default 3)")
        import_module(f"eaglefinch.research.{module}").add_arguments(sub)
        sub.set_defaults(func=cmd_run, experiment_module=module)


def cmd_run(args):
    from .report import device_of, run_start
    device_of(args.device)   # an unusable --device fails before any work
    args.started = run_start()
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out}: exists and is not a folder")
    args.out.mkdir(parents=True, exist_ok=True)
    import_module(f"eaglefinch.research.{args.experiment_module}").run(args, args.out)
    print(f"wrote {args.out / 'results.md'} and {args.out / 'results.json'}")


def int_list(text: str) -> tuple:
    """An argparse type: comma-separated positive integers ("32,64")."""
    parse = int_at_least(1)
    return tuple(parse(part) for part in text.split(","))


def choice_list(choices, what: str):
    """An argparse type: comma-separated names among `choices` (each a `what`, for the error)."""
    def parse(text: str) -> tuple:
        names = tuple(text.split(","))
        unknown = [n for n in names if n not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(unknown)}; choose from {', '.join(choices)}")
        return names
    return parse


def add_steps_argument(parser):
    parser.add_argument("--steps", type=int_at_least(1),
                        help="training steps of every model (default: the scale's; fewer for a quick check)")

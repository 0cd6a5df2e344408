"""What every domain's commands share: the options of `train` and of sampling, and the argparse types
that check a value when the command line is parsed (a bad one is argparse's usage error, exit 2)."""
import argparse
import math
from pathlib import Path

from .sampling import SEED_LIMIT  # noqa: F401  (the domains' --seed options take it from here)


def _convert(text: str, convert, what: str):
    """convert(text), or the usage error "expected <what>" (argparse names the option)."""
    try:
        return convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def int_at_least(minimum: int, maximum: int | None = None):
    """An argparse type: an integer >= minimum (and <= maximum); anything else is a usage error naming the option."""
    def parse(text: str) -> int:
        value = _convert(text, int, "an integer")
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f"at least {minimum}" if maximum is None else f"between {minimum} and {maximum}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value
    return parse


def int_in(low: int, high: int):
    """An argparse type: an integer in [low, high]."""
    return int_at_least(low, high)


def float_in(low: float = -math.inf, high: float = math.inf, *, low_open: bool = False):
    """An argparse type: a finite number in [low, high] ((low, high] with low_open); inf and nan are refused."""
    if math.isinf(low) and math.isinf(high):
        wanted = "a finite number"
    elif math.isinf(high):
        wanted = f"a finite number {'>' if low_open else '>='} {low:g}"
    else:
        wanted = f"a number in {'(' if low_open else '['}{low:g}, {high:g}]"

    def parse(text: str) -> float:
        value = _convert(text, float, "a number")
        above_low = value > low if low_open else value >= low
        if not (math.isfinite(value) and above_low and value <= high):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text}")
        return value
    return parse


def output_path(text: str) -> str:
    """An argparse type: a file or folder the command will create. Its parent folder must exist: a
    missing one is a mistake in the path, and is never created."""
    parent = Path(text).parent
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: the folder {parent} does not exist")
    return text


def add_train_args(parser, domain: str, config_example: str, data_help: str | None = None,
                   init_help: str = "fine-tune: start from this run folder or model file (.safetensors, official .pth)") -> None:
    """The options of every domain's `train` command (`eaglefinch <domain> train`)."""
    parser.add_argument("--config", required=True, help=f"a shipped training config's name or a JSON file ({config_example})")
    parser.add_argument("--data", required=True, help=data_help or f"folder written by `eaglefinch {domain} prepare`")
    parser.add_argument("--out", required=True, type=output_path,
                        help="run folder (model.safetensors, checkpoint.pt, metrics.jsonl, loss.png)")
    parser.add_argument("--max-steps", type=int_at_least(1), help="stop at this step (the lr schedule keeps the config's length)")
    parser.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    parser.add_argument("--seed", type=int_at_least(0, SEED_LIMIT))
    parser.add_argument("--init", help=init_help)
    parser.add_argument("--deepspeed", metavar="DS_CONFIG",
                        help="DeepSpeed config: a shipped one (deepspeed/zero1, zero2, zero3) or a JSON file; "
                             "run under the deepspeed launcher")
    parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # added by the launcher; ranks come from env


def add_sampling_args(parser, top_p: float = 1.0, seed: int | None = None, temperature: float = 1.0) -> None:
    """The sampler's options (`sampler_from` reads them back), with this command's defaults."""
    parser.add_argument("--temperature", type=float_in(0), default=temperature, help="0 = greedy")
    parser.add_argument("--top-p", type=float_in(0, 1), default=top_p, help="nucleus mass; 1.0 = no truncation")
    parser.add_argument("--top-k", type=int_at_least(0), default=0, help="0 = off")
    parser.add_argument("--presence-penalty", type=float_in(), default=0.0)
    parser.add_argument("--frequency-penalty", type=float_in(), default=0.0)
    parser.add_argument("--penalty-decay", type=float_in(0, 1, low_open=True), default=0.996)
    parser.add_argument("--seed", type=int_at_least(0, SEED_LIMIT), default=seed)


def sampler_from(args):
    """The SamplerConfig of the options added by `add_sampling_args`."""
    from .sampling import SamplerConfig
    return SamplerConfig(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                         presence_penalty=args.presence_penalty, frequency_penalty=args.frequency_penalty,
                         penalty_decay=args.penalty_decay)

"""What every domain's commands share: the options of `train` and of sampling."""
import argparse


def add_train_args(parser, domain: str, config_example: str, data_help: str | None = None,
                   init_help: str = "fine-tune: start from this run folder or model file (.safetensors, official .pth)") -> None:
    """The options of every domain's `train` command (`eaglefinch <domain> train`)."""
    parser.add_argument("--config", required=True, help=f"a shipped training config's name or a JSON file ({config_example})")
    parser.add_argument("--data", required=True, help=data_help or f"folder written by `eaglefinch {domain} prepare`")
    parser.add_argument("--out", required=True, help="run folder (model.safetensors, checkpoint.pt, metrics.jsonl, loss.png)")
    parser.add_argument("--max-steps", type=int, help="stop at this step (the lr schedule keeps the config's length)")
    parser.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--init", help=init_help)
    parser.add_argument("--deepspeed", metavar="DS_CONFIG",
                        help="DeepSpeed config: a shipped one (deepspeed/zero1, zero2, zero3) or a JSON file; "
                             "run under the deepspeed launcher")
    parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # added by the launcher; ranks come from env


def add_sampling_args(parser, top_p: float = 1.0, seed: int | None = None, temperature: float = 1.0) -> None:
    """The sampler's options (`sampler_from` reads them back), with this command's defaults."""
    parser.add_argument("--temperature", type=float, default=temperature, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=top_p, help="nucleus mass; 1.0 = no truncation")
    parser.add_argument("--top-k", type=int, default=0, help="0 = off")
    parser.add_argument("--presence-penalty", type=float, default=0.0)
    parser.add_argument("--frequency-penalty", type=float, default=0.0)
    parser.add_argument("--penalty-decay", type=float, default=0.996)
    parser.add_argument("--seed", type=int, default=seed)


def sampler_from(args):
    """The SamplerConfig of the options added by `add_sampling_args`."""
    from .sampling import SamplerConfig
    return SamplerConfig(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                         presence_penalty=args.presence_penalty, frequency_penalty=args.frequency_penalty,
                         penalty_decay=args.penalty_decay)

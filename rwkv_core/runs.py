"""What every domain's commands share around a training run: configs, run folders, sampling options.

A run folder (written by `rwkv_core.train.train` and the domain's train function) holds
model.safetensors and config.json (the training config, copied), plus the domain's own files
(text: vocab_subset.json, music: tokenizer.json). Commands take `--checkpoint` as a run folder or
as a model file; files that belong to the run are looked up in the folder the model file is in.
"""
import argparse
import json
import shutil
from pathlib import Path

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"


def load_config(path, sections) -> dict:
    """A training config: a JSON object whose keys are among `sections` (e.g. ("model", "train"))."""
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read the training config ({e})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: a training config is a JSON object with sections {', '.join(sections)}")
    unknown = sorted(set(d) - set(sections))
    if unknown:
        raise ValueError(f"{path}: unknown sections {unknown}; expected {', '.join(sections)}")
    return d


def run_config(config_path, sections, max_steps=None, seed=None):
    """(config dict, TrainConfig) of a training run, with the command line's --max-steps / --seed
    on top; torch is seeded with the run's seed here, so the weights of a model built next follow it."""
    import torch

    from .train import train_config_with
    cfg = load_config(config_path, sections)
    train_cfg = train_config_with(cfg.get("train", {}), max_steps, seed)
    torch.manual_seed(train_cfg.seed)
    return cfg, train_cfg


def copy_config(config_path, out_dir) -> None:
    """Keep the training config in the run folder as config.json (unless it already is that file)."""
    target = Path(out_dir) / CONFIG_FILE
    if Path(config_path).resolve() != target.resolve():
        shutil.copyfile(config_path, target)


def run_folder(checkpoint) -> Path:
    """The folder of a run: the checkpoint itself when it is a folder, else the model file's folder."""
    path = Path(checkpoint)
    return path if path.is_dir() else path.parent


def model_file(checkpoint) -> Path:
    """The model file of a checkpoint: a run folder's model.safetensors, or the file given."""
    path = Path(checkpoint)
    if path.is_dir():
        path = path / MODEL_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path.parent}: a run folder must contain {MODEL_FILE}")
    elif not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file (give a run folder, a .safetensors or a .pth)")
    return path


def load_model(checkpoint):
    """The model of a run folder or of an official .pth / our .safetensors file, in eval mode."""
    from .model import RWKV
    return RWKV.from_pretrained(model_file(checkpoint)).eval()


def training_ctx_len(checkpoint, model) -> int:
    """The ctx_len a run was trained with (the train section of its config.json), else the model config's."""
    config = run_folder(checkpoint) / CONFIG_FILE
    if config.is_file():
        try:
            train = json.loads(config.read_text()).get("train", {})
        except (OSError, ValueError, AttributeError) as e:
            raise ValueError(f"{config}: cannot read the run's training config ({e})") from None
        if train.get("ctx_len"):
            return int(train["ctx_len"])
    return model.cfg.ctx_len


def add_train_args(parser, domain: str, config_example: str, data_help: str | None = None,
                   init_help: str = "start from the weights of this model file (.pth or .safetensors)") -> None:
    """The options of every domain's `train` command (`eaglefinch <domain> train`)."""
    parser.add_argument("--config", required=True, help=f"training config JSON ({config_example})")
    parser.add_argument("--data", required=True, help=data_help or f"folder written by `eaglefinch {domain} prepare`")
    parser.add_argument("--out", required=True, help="run folder (model.safetensors, checkpoint.pt, metrics.jsonl, loss.png)")
    parser.add_argument("--max-steps", type=int, help="stop at this step (the lr schedule keeps the config's length)")
    parser.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--init", help=init_help)
    parser.add_argument("--deepspeed", metavar="DS_CONFIG",
                        help="DeepSpeed JSON config, e.g. configs/deepspeed/zero1.json (run under the deepspeed launcher)")
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

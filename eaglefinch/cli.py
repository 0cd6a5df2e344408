"""The `eaglefinch` command: one subcommand group per domain (text, music, visual), `research`, `serve` and `merge`."""
import argparse
import sys


def build_parser():
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    parser = argparse.ArgumentParser(prog="eaglefinch", parents=[common],
                                     description="Eagle (RWKV-5) and Finch (RWKV-6) models for text, music and vision")
    domains = parser.add_subparsers(dest="domain", required=True, metavar="DOMAIN")
    from eaglefinch.text.cli import add_commands as add_text
    add_text(domains.add_parser("text", help="text models: prepare, train, generate, chat, eval", parents=[common]), common)
    from eaglefinch.music.cli import add_commands as add_music
    add_music(domains.add_parser("music", help="music models (MIDI and ABC): prepare, train, generate, continue, render, "
                                 "eval, long-eval, abc", parents=[common]), common)
    from eaglefinch.visual.cli import add_commands as add_visual
    add_visual(domains.add_parser("visual", help="image-to-text models: shapes, prepare, clip-train, train, caption, eval",
                                  parents=[common]), common)
    from eaglefinch.research.cli import add_commands as add_research
    add_research(domains.add_parser("research", help="the paper's claims, one command each: ablation, mqar, longctx, "
                                    "efficiency, lora-rank, abc", parents=[common]), common)
    from eaglefinch.serve.cli import add_command as add_serve
    add_serve(domains.add_parser("serve", help="an OpenAI-compatible HTTP server for a text, visual or music model", parents=[common]))
    add_merge(domains.add_parser("merge", help="fold LoRA adapters into their base: an official .pth", parents=[common]))
    return parser


def merged_model_path(text: str) -> str:
    """An argparse type for merge's --out: a .pth (official layout) or .safetensors in an existing folder."""
    from eaglefinch.rwkv_core.cli import output_path
    if not text.endswith((".pth", ".safetensors")):
        raise argparse.ArgumentTypeError(f"{text}: give a .pth (the official layout) or a .safetensors file")
    return output_path(text)


def add_merge(parser):
    parser.add_argument("--checkpoint", required=True,
                        help="the base: an official .pth, a .safetensors, or a run folder (a LoRA run brings its adapters)")
    parser.add_argument("--adapters", metavar="FILE", help="the LoRA adapters (.safetensors); default: the run folder's own")
    parser.add_argument("--out", required=True, type=merged_model_path, help="the merged model: .pth or .safetensors")
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), help="of the written weights (default: as the base stores them)")
    parser.set_defaults(func=cmd_merge)


def cmd_merge(args):
    import torch

    from eaglefinch.rwkv_core.checkpoint import save_model
    from eaglefinch.rwkv_core.lora import has_adapters, merge_adapters
    from eaglefinch.rwkv_core.run import Run

    model = Run.open(args.checkpoint).load_model(dtype=None, adapters=args.adapters)
    if not has_adapters(model):
        raise ValueError(f"{args.checkpoint}: no adapters to merge; give --adapters FILE, or a LoRA run folder")
    merge_adapters(model)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}.get(args.dtype)
    save_model(model, args.out, dtype=dtype)
    print(f"wrote {args.out}")


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
        return 0
    except KeyboardInterrupt:
        print("eaglefinch: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one line for the user; --debug shows the traceback
        if args.debug:
            raise
        message = " ".join(str(e).split()) or type(e).__name__  # one line, never an empty one
        print(f"eaglefinch: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

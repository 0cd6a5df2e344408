"""`eaglefinch visual ...` subcommands: shapes, prepare, clip-train, train, caption, eval."""
import json
import sys
from pathlib import Path

from eaglefinch.rwkv_core.cli import add_sampling_args, add_train_args, sampler_from


def cmd_shapes(args):
    from .shapes import write_shapes_dataset
    counts = write_shapes_dataset(args.out, args.train, args.heldout, seed=args.seed, size=args.size)
    print(f"wrote {counts['train']} training and {counts['heldout']} held-out images with captions to {args.out}")


def cmd_prepare(args):
    from .openclipart import SVG_ROOT, prepare_openclipart
    report = prepare_openclipart(args.svg_root or SVG_ROOT, args.out, size=args.size, limit=args.limit)
    for path, reason in report.bad[:10]:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    print(f"rendered {report.written} clip-arts into {report.jsonl}" + (f"; {len(report.bad)} file(s) skipped" if report.bad else ""))


def cmd_clip_train(args):
    from .clip_train import retrieval_accuracy, save_clip, train_clip
    from .data import read_records

    records = [r for r in read_records(args.data) if r.image is not None]
    pairs = [(r.image, r.turns[0][1]) for r in records]  # caption records: (image, caption)
    run = train_clip(pairs, args.steps, model_name=args.model, batch_size=args.batch_size, lr=args.lr,
                     seed=args.seed, log_every=max(1, args.steps // 20))
    save_clip(run, args.out)
    candidates = sorted({caption for _, caption in pairs})
    if len(candidates) <= 1000:  # retrieval among the distinct captions, on (at most) 500 training pairs
        print(f"image->caption retrieval on training pairs: {retrieval_accuracy(run, pairs[:500], candidates):.1%}")
    print(f"trained in {run.seconds:.0f} s, final loss {run.losses[-1]:.3f}; wrote {args.out}")


def cmd_train(args):
    from .train import train_visual
    train_visual(args.config, args.data, args.out, val=args.val, stage=args.stage, clip=args.clip,
                 random_encoder=args.random_encoder, init=args.init, max_steps=args.max_steps,
                 resume=args.resume, seed=args.seed, deepspeed_config=args.deepspeed)


def cmd_caption(args):
    from eaglefinch.rwkv_core.files import atomic_path

    from .caption import caption_files
    from .run import VisualRun

    vlm, tokenizer = VisualRun.open(args.checkpoint).load()
    sampler = sampler_from(args)
    results, errors = caption_files(vlm, tokenizer, args.images, args.prompt, batch_size=args.batch_size,
                                    on_result=None if args.out else lambda path, text: print(f"{path}\t{text}", flush=True),
                                    max_tokens=args.max_tokens, sampler=sampler, seed=args.seed)
    for path, error in errors:
        print(f"skipped {error}", file=sys.stderr)
    if not results:
        raise ValueError(f"no image could be read ({len(errors)} bad file(s))" if errors else "no image files given")
    if args.out:
        with atomic_path(args.out) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                for path, text in results:
                    f.write(json.dumps({"image": str(path), "caption": text}, ensure_ascii=False) + "\n")
        print(f"captioned {len(results)} image(s) into {args.out}" + (f"; {len(errors)} bad file(s) skipped" if errors else ""))


def cmd_eval(args):
    from .data import read_records
    from .evaluate import accuracy, evaluate_captions, save_grid
    from .run import VisualRun

    run = VisualRun.open(args.checkpoint)
    vlm, tokenizer = run.load()
    results = evaluate_captions(vlm, tokenizer, read_records(args.data))
    out = Path(args.out) if args.out else run.folder
    out.mkdir(parents=True, exist_ok=True)
    grid = save_grid(results[:16], out / "captions.png")
    print(f"exact-caption accuracy: {accuracy(results):.1%} of {len(results)} images; grid: {grid}")


def add_commands(parser, common):
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("shapes", parents=[common], help="write the procedural shapes dataset (images + captions)")
    s.add_argument("--out", required=True)
    s.add_argument("--train", type=int, default=10_000)
    s.add_argument("--heldout", type=int, default=200)
    s.add_argument("--size", type=int, default=64, help="image side in pixels")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_shapes)

    p = sub.add_parser("prepare", parents=[common], help="render Debian's openclipart-svg into image-caption JSONL")
    p.add_argument("--svg-root", help="default /usr/share/openclipart/svg (apt install openclipart-svg)")
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--limit", type=int, help="render at most this many files")
    p.set_defaults(func=cmd_prepare)

    c = sub.add_parser("clip-train", parents=[common], help="train a small open_clip CLIP on image-caption JSONL")
    c.add_argument("--data", required=True, help="JSONL of {\"image\", \"caption\"} records")
    c.add_argument("--out", required=True, help="weights file for `visual train --clip`")
    c.add_argument("--model", default="EagleFinch-ViT-Tiny", help="open_clip model name")
    c.add_argument("--steps", type=int, default=3000)
    c.add_argument("--batch-size", type=int, default=64)
    c.add_argument("--lr", type=float, default=1e-3)
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(func=cmd_clip_train)

    t = sub.add_parser("train", parents=[common], help="train a VisualRWKV (stage 1: projector; stage 2: + backbone; DeepSpeed: ZeRO 1/2)")
    add_train_args(t, "visual", "model, train and visual sections: visual-tiny",
                   data_help="JSONL of captions or LLaVA conversations",
                   init_help="a visual run folder (e.g. stage 1), or a language model to build on")
    t.add_argument("--val", help="held-out JSONL for the validation loss")
    t.add_argument("--stage", type=int, choices=(1, 2), default=2)
    t.add_argument("--clip", help="open_clip weights for the encoder (from `visual clip-train`)")
    t.add_argument("--random-encoder", action="store_true", help="start the encoder untrained")
    t.set_defaults(func=cmd_train)

    g = sub.add_parser("caption", parents=[common], help="caption images or folders (bad files are skipped and reported)")
    g.add_argument("images", nargs="+", help="image files or folders")
    g.add_argument("--checkpoint", required=True, help="visual run folder")
    g.add_argument("--prompt", default="Describe the image.", help="question about each image")
    g.add_argument("--out", help="write JSONL here instead of printing path<TAB>caption lines")
    g.add_argument("--batch-size", type=int, default=16)
    g.add_argument("--max-tokens", type=int, default=60)
    add_sampling_args(g, top_p=1.0, seed=0, temperature=0.0)  # greedy by default: a caption, not a story
    g.set_defaults(func=cmd_caption)

    e = sub.add_parser("eval", parents=[common], help="exact-caption accuracy on image-caption JSONL, and a grid PNG")
    e.add_argument("--checkpoint", required=True, help="visual run folder")
    e.add_argument("--data", required=True, help="JSONL of {\"image\", \"caption\"} records")
    e.add_argument("--out", help="folder for captions.png (default: the run folder)")
    e.set_defaults(func=cmd_eval)

"""`eaglefinch visual ...` subcommands: shapes, prepare, clip-train, train, caption, eval."""
import sys
from pathlib import Path

from eaglefinch.rwkv_core.cli import (SEED_LIMIT, add_sampling_args, add_train_args, float_in, int_at_least, output_path,
                                        sampler_from)

from .images import DEFAULT_MAX_PIXELS, printable, warn_skipped
from .shapes import MIN_SIZE as MIN_SHAPES_SIZE


def add_max_pixels_arg(parser) -> None:
    """--max-pixels, for the commands that read images."""
    parser.add_argument("--max-pixels", type=int_at_least(1), default=DEFAULT_MAX_PIXELS,
                        help=f"larger images count as unreadable (a decompression-bomb guard; default {DEFAULT_MAX_PIXELS:,})")


def report_unreadable(results, errors, nothing_given: str) -> None:
    """Warn about the skipped images (the first few named); fail with one line if none was readable."""
    warn_skipped(errors)
    if not results:
        raise ValueError(f"no image could be read ({len(errors)} bad file(s))" if errors else nothing_given)


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
    from .train import drop_unreadable_images

    records = [r for r in read_records(args.data) if r.image is not None]
    records = drop_unreadable_images(records, args.data, args.max_pixels)  # a bad file must not stop step 5000
    pairs = [(r.image, r.turns[0][1]) for r in records]  # caption records: (image, caption)
    run = train_clip(pairs, args.steps, model_name=args.model, batch_size=args.batch_size, lr=args.lr,
                     seed=args.seed, log_every=max(1, args.steps // 20), max_pixels=args.max_pixels)
    save_clip(run, args.out)
    candidates = sorted({caption for _, caption in pairs})
    if len(candidates) <= 1000:  # retrieval among the distinct captions, on (at most) 500 training pairs
        print(f"image->caption retrieval on training pairs: {retrieval_accuracy(run, pairs[:500], candidates):.1%}")
    print(f"trained in {run.seconds:.0f} s, final loss {run.losses[-1]:.3f}; wrote {args.out}")


def cmd_train(args):
    from .train import train_visual
    train_visual(args.config, args.data, args.out, val=args.val, stage=args.stage, clip=args.clip,
                 random_encoder=args.random_encoder, init=args.init, max_steps=args.max_steps,
                 resume=args.resume, seed=args.seed, deepspeed_config=args.deepspeed, max_pixels=args.max_pixels)


def cmd_caption(args):
    from .caption import caption_files
    from .data import write_jsonl
    from .run import VisualRun

    vlm, tokenizer = VisualRun.open(args.checkpoint).load()
    sampler = sampler_from(args)
    results, errors = caption_files(vlm, tokenizer, args.images, args.prompt, batch_size=args.batch_size,
                                    on_result=None if args.out else lambda path, text: print(f"{printable(path)}\t{text}", flush=True),
                                    max_pixels=args.max_pixels, max_tokens=args.max_tokens, sampler=sampler, seed=args.seed)
    report_unreadable(results, errors, "no image files given")
    if args.out:
        write_jsonl(args.out, [{"image": str(path), "caption": text} for path, text in results])
        print(f"captioned {len(results)} image(s) into {args.out}" + (f"; {len(errors)} bad file(s) skipped" if errors else ""))


def cmd_eval(args):
    from .data import read_records
    from .evaluate import accuracy, evaluate_captions, save_grid
    from .run import VisualRun

    run = VisualRun.open(args.checkpoint)
    vlm, tokenizer = run.load()
    results, errors = evaluate_captions(vlm, tokenizer, read_records(args.data), max_pixels=args.max_pixels)
    report_unreadable(results, errors, f"{args.data}: no records")
    out = Path(args.out) if args.out else run.folder
    out.mkdir(parents=True, exist_ok=True)
    grid = save_grid(results[:16], out / "captions.png", max_pixels=args.max_pixels)
    skipped = f"; {len(errors)} unreadable image(s) skipped" if errors else ""
    print(f"exact-caption accuracy: {accuracy(results):.1%} of {len(results)} images{skipped}; grid: {grid}")


def add_commands(parser, common):
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("shapes", parents=[common], help="write the procedural shapes dataset (images + captions)")
    s.add_argument("--out", required=True, type=output_path)
    s.add_argument("--train", type=int_at_least(1), default=10_000)
    s.add_argument("--heldout", type=int_at_least(0), default=200)
    s.add_argument("--size", type=int_at_least(MIN_SHAPES_SIZE), default=64,
                   help=f"image side in pixels (at least {MIN_SHAPES_SIZE}, so three shapes fit in a cell)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_shapes)

    p = sub.add_parser("prepare", parents=[common], help="render Debian's openclipart-svg into image-caption JSONL")
    p.add_argument("--svg-root", help="default /usr/share/openclipart/svg (apt install openclipart-svg)")
    p.add_argument("--out", required=True, type=output_path)
    p.add_argument("--size", type=int_at_least(1), default=224)
    p.add_argument("--limit", type=int_at_least(1), help="render at most this many files")
    p.set_defaults(func=cmd_prepare)

    c = sub.add_parser("clip-train", parents=[common], help="train a small open_clip CLIP on image-caption JSONL")
    c.add_argument("--data", required=True, help="JSONL of {\"image\", \"caption\"} records")
    c.add_argument("--out", required=True, type=output_path, help="weights file for `visual train --clip`")
    c.add_argument("--model", default="EagleFinch-ViT-Tiny", help="open_clip model name")
    c.add_argument("--steps", type=int_at_least(1), default=3000)
    c.add_argument("--batch-size", type=int_at_least(2), default=64,
                   help="pairs per step (at least 2: each image is told apart from the others' captions)")
    c.add_argument("--lr", type=float_in(0, low_open=True), default=1e-3)
    c.add_argument("--seed", type=int_at_least(0, SEED_LIMIT), default=0)
    add_max_pixels_arg(c)
    c.set_defaults(func=cmd_clip_train)

    t = sub.add_parser("train", parents=[common], help="train a VisualRWKV (stage 1: projector; stage 2: + backbone; DeepSpeed: ZeRO 1/2)")
    add_train_args(t, "visual", "model, train and visual sections: visual-tiny",
                   data_help="JSONL of captions or LLaVA conversations",
                   init_help="a visual run folder (e.g. stage 1), or a language model to build on")
    t.add_argument("--val", help="held-out JSONL for the validation loss")
    t.add_argument("--stage", type=int, choices=(1, 2), default=2)
    t.add_argument("--clip", help="open_clip weights for the encoder (from `visual clip-train`)")
    t.add_argument("--random-encoder", action="store_true", help="start the encoder untrained")
    add_max_pixels_arg(t)
    t.set_defaults(func=cmd_train)

    g = sub.add_parser("caption", parents=[common], help="caption images or folders (bad files are skipped and counted)")
    g.add_argument("images", nargs="+", help="image files or folders")
    g.add_argument("--checkpoint", required=True, help="visual run folder")
    g.add_argument("--prompt", default="Describe the image.", help="question about each image")
    g.add_argument("--out", type=output_path, help="write JSONL here instead of printing path<TAB>caption lines")
    g.add_argument("--batch-size", type=int_at_least(1), default=16)
    g.add_argument("--max-tokens", type=int_at_least(1), default=60)
    add_max_pixels_arg(g)
    add_sampling_args(g, top_p=1.0, seed=0, temperature=0.0)  # greedy by default: a caption, not a story
    g.set_defaults(func=cmd_caption)

    e = sub.add_parser("eval", parents=[common], help="exact-caption accuracy on image-caption JSONL, and a grid PNG "
                                                      "(unreadable images are skipped and counted)")
    e.add_argument("--checkpoint", required=True, help="visual run folder")
    e.add_argument("--data", required=True, help="JSONL of {\"image\", \"caption\"} records")
    e.add_argument("--out", type=output_path, help="folder for captions.png (default: the run folder)")
    add_max_pixels_arg(e)
    e.set_defaults(func=cmd_eval)

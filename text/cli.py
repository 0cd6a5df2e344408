"""`eaglefinch text ...` subcommands: prepare, train, generate, chat, eval."""
import sys
from pathlib import Path

from eaglefinch.rwkv_core.cli import add_sampling_args, add_train_args, sampler_from


def cmd_prepare(args):
    from .prepare import prepare
    from .tokenizer import WorldTokenizer
    prepare(args.inputs, args.out, WorldTokenizer(), val_fraction=args.val_fraction, overwrite=args.overwrite,
            metadata={"tokenizer": "rwkv_vocab_v20230424"})


def cmd_train(args):
    from .train import train_text
    train_text(args.config, args.data, args.out, max_steps=args.max_steps, resume=args.resume, seed=args.seed,
               init=args.init, deepspeed_config=args.deepspeed)


def load_state(path):
    from eaglefinch.rwkv_core import RWKVState
    return RWKVState.load(path) if path else None


def write_stdout(text):
    sys.stdout.write(text)
    sys.stdout.flush()


def cmd_generate(args):
    from .generate import generate_text
    from .run import TextRun

    model, tokenizer = TextRun.open(args.checkpoint).load()
    state = load_state(args.load_state)
    write_stdout(args.prompt)
    _, state = generate_text(model, [args.prompt], args.max_tokens, sampler_from(args),
                             tokenizer=tokenizer, stop=args.stop or (), seed=args.seed,
                             state=state, on_text=lambda _row, text: write_stdout(text))
    write_stdout("\n")
    if args.save_state:
        state.save(args.save_state)


def cmd_chat(args):
    from .chat import ChatSession
    from .run import TextRun

    session = ChatSession(*TextRun.open(args.checkpoint).load(), sampler_from(args),
                          seed=args.seed, state=load_state(args.load_state), max_tokens=args.max_tokens)
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            write_stdout("User: ")
        line = sys.stdin.readline()
        if not line:
            break
        if not line.strip():
            continue
        write_stdout("Assistant:")
        session.ask(line.strip(), on_text=write_stdout)
        write_stdout("\n\n")
    if args.save_state and session.state is not None:
        session.state.save(args.save_state)


def add_generation_args(p):
    p.add_argument("--max-tokens", type=int, default=200)
    add_sampling_args(p, top_p=0.85)
    p.add_argument("--load-state", help="continue from a saved state (skips re-reading a long prompt)")
    p.add_argument("--save-state", help="save the state at the end (.safetensors)")


def cmd_eval(args):
    from .evaluate import evaluate, save_results, summary
    from .run import TextRun

    run = TextRun.open(args.checkpoint)
    model, tokenizer = run.load()
    results = evaluate(model, args.data, args.split, tokenizer=tokenizer, ctx_len=run.ctx_len or model.cfg.ctx_len,
                       max_len=args.max_len, batch_size=args.batch_size, max_tokens=args.max_tokens)
    out = Path(args.out) if args.out else run.folder
    out.mkdir(exist_ok=True)
    json_path, plot_path = save_results(results, out)
    print(summary(results))
    print(f"wrote {json_path} and {plot_path}")


def add_commands(parser, common):
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("prepare", parents=[common], help="tokenise .txt/.jsonl files or folders into shards")
    p.add_argument("inputs", nargs="+", help=".txt or .jsonl files, or folders of them")
    p.add_argument("--out", required=True, help="output folder (train/ and val/ shards)")
    p.add_argument("--val-fraction", type=float, default=0.01)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=cmd_prepare)

    t = sub.add_parser("train", parents=[common], help="train or fine-tune a text model")
    add_train_args(t, "text", "model, train and text sections: text-tiny")
    t.set_defaults(func=cmd_train)

    g = sub.add_parser("generate", parents=[common], help="continue a prompt, streaming text to stdout")
    g.add_argument("--checkpoint", required=True, help="official .pth, .safetensors, or a run folder")
    g.add_argument("--prompt", required=True)
    g.add_argument("--stop", action="append", help="stop at this string (repeatable)")
    add_generation_args(g)
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("chat", parents=[common], help="chat on stdin/stdout, the state carried across turns")
    c.add_argument("--checkpoint", required=True, help="official .pth, .safetensors, or a run folder")
    add_generation_args(c)
    c.set_defaults(func=cmd_chat)

    e = sub.add_parser("eval", parents=[common], help="loss, bits per byte and loss by position on held-out shards")
    e.add_argument("--checkpoint", required=True, help="official .pth, .safetensors, or a run folder")
    e.add_argument("--data", required=True, help="folder written by `eaglefinch text prepare`")
    e.add_argument("--split", default="val")
    e.add_argument("--max-len", type=int, help="window length of the loss-by-position curve (default 4 x training ctx_len)")
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--max-tokens", type=int, help="score at most this many tokens per pass (default: the whole split)")
    e.add_argument("--out", help="folder for eval.json and eval_positions.png (default: the run folder, or the file's folder)")
    e.set_defaults(func=cmd_eval)

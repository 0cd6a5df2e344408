"""`eaglefinch text ...` subcommands: prepare, train, generate, chat, eval."""
import argparse
import os
import sys
from pathlib import Path

from eaglefinch.rwkv_core.cli import add_sampling_args, add_train_args, float_in, int_at_least, output_path, sampler_from


def cmd_prepare(args):
    from .prepare import prepare
    from .tokenizer import WorldTokenizer
    prepare(args.inputs, args.out, WorldTokenizer(), val_fraction=args.val_fraction, overwrite=args.overwrite,
            metadata={"tokenizer": "rwkv_vocab_v20230424"}, extensions=args.ext)


def cmd_train(args):
    from .train import train_text
    train_text(args.config, args.data, args.out, max_steps=args.max_steps, resume=args.resume, seed=args.seed,
               init=args.init, deepspeed_config=args.deepspeed)


def load_state(path, model):
    """The state saved at `path` (None without one), checked to be one of `model`'s."""
    from eaglefinch.rwkv_core import RWKVState
    if not path:
        return None
    state = RWKVState.load(path)
    cfg = model.cfg
    if state.batch_size != 1 or state.wkv.shape[0] != cfg.n_layer or tuple(state.wkv.shape[2:]) != \
            (cfg.n_head, cfg.head_size, cfg.head_size) or state.att_shift.shape[-1] != cfg.n_embd:
        raise ValueError(f"{path}: a state of another model (WKV state {tuple(state.wkv.shape)}; this model needs "
                         f"({cfg.n_layer}, 1, {cfg.n_head}, {cfg.head_size}, {cfg.head_size}))")
    return state


def write_stdout(text):
    sys.stdout.write(text)
    sys.stdout.flush()


def utf8_text(data: bytes, where: str) -> str:
    """`data` decoded as UTF-8; otherwise a ValueError naming `where` and the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{where}: not UTF-8 text (byte {data[e.start]:#04x} at {e.start})") from None


def escaped_text(text: str) -> str:
    """An argparse type for --prompt and --stop: Python string escapes (\\n, \\t, \\\\, \\u00e9) become the
    characters they name, so "User: Hi\\n\\nAssistant:" means what it says in any shell."""
    try:
        utf8_text(os.fsencode(text), "the argument")  # bytes that are not UTF-8 arrive as surrogates
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    try:
        return text.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except UnicodeDecodeError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: bad escape ({e.reason}); write a backslash as \\\\") from None


def read_prompt(args) -> str:
    """The prompt: --prompt (escapes decoded), standard input for `--prompt -`, or --prompt-file as it is."""
    if args.prompt_file is not None:
        try:
            data = Path(args.prompt_file).read_bytes()
        except OSError as e:
            raise ValueError(f"{args.prompt_file}: cannot read the prompt file ({e.strerror})") from None
        return utf8_text(data, args.prompt_file)
    if args.prompt == "-":
        return utf8_text(sys.stdin.buffer.read(), "the prompt on standard input")
    return args.prompt


def cmd_generate(args):
    from .generate import generate_text
    from .run import TextRun

    model, tokenizer = TextRun.open(args.checkpoint).load(adapters=args.adapters)
    state = load_state(args.load_state, model)
    prompt = read_prompt(args)
    write_stdout(prompt)
    _, state = generate_text(model, [prompt], args.max_tokens, sampler_from(args),
                             tokenizer=tokenizer, stop=args.stop or (), seed=args.seed, state=state,
                             on_text=lambda _row, text: write_stdout(text), progress=True)
    write_stdout("\n")
    if args.save_state:
        state.save(args.save_state)


def cmd_chat(args):
    from .chat import ChatSession
    from .run import TextRun

    model, tokenizer = TextRun.open(args.checkpoint).load(adapters=args.adapters)
    session = ChatSession(model, tokenizer, sampler_from(args), seed=args.seed,
                          state=load_state(args.load_state, model), max_tokens=args.max_tokens, progress=True)
    try:
        for message in user_turns(sys.stdin.buffer, prompt="User: " if sys.stdin.isatty() else None):
            write_stdout("Assistant:")
            session.ask(message, on_text=write_stdout)
            write_stdout("\n\n")
    finally:  # whatever ends the chat (end of input, Ctrl-C, an error), the conversation so far is kept
        if args.save_state:
            (session.state or model.initial_state(1)).save(args.save_state)


def user_turns(stdin, prompt=None):
    """The non-blank lines of a binary stream, stripped; one that is not UTF-8 is reported on stderr
    and skipped. `prompt` is written before each line is read (interactive use)."""
    number = 0
    while True:
        if prompt:
            write_stdout(prompt)
        raw = stdin.readline()
        if not raw:
            return
        number += 1
        try:
            line = utf8_text(raw, f"input line {number}").strip()
        except ValueError as e:
            print(f"eaglefinch: {e}: skipped", file=sys.stderr, flush=True)
            continue
        if line:
            yield line


def add_checkpoint_args(p):
    p.add_argument("--checkpoint", required=True, help="official .pth, .safetensors, or a run folder")
    p.add_argument("--adapters", metavar="FILE",
                   help="LoRA adapters (.safetensors) to run with, unmerged (a LoRA run folder loads its own)")


def add_generation_args(p):
    p.add_argument("--max-tokens", type=int_at_least(1), default=200)
    add_sampling_args(p, top_p=0.85)
    p.add_argument("--load-state", help="continue from a saved state (skips re-reading a long prompt)")
    p.add_argument("--save-state", type=output_path, help="save the state at the end (.safetensors)")


def cmd_eval(args):
    from .evaluate import evaluate, save_results, summary
    from .run import TextRun

    run = TextRun.open(args.checkpoint)
    model, tokenizer = run.load(adapters=args.adapters)
    results = evaluate(model, args.data, args.split, tokenizer=tokenizer, ctx_len=run.ctx_len or model.cfg.ctx_len,
                       max_len=args.max_len, batch_size=args.batch_size, max_tokens=args.max_tokens)
    out = Path(args.out) if args.out else run.folder
    out.mkdir(exist_ok=True)
    json_path, plot_path = save_results(results, out)
    print(summary(results))
    print(f"wrote {json_path} and {plot_path}")


def add_commands(parser, common):
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("prepare", parents=[common], help="tokenise text files or folders of them into shards")
    p.add_argument("inputs", nargs="+", help=".txt or .jsonl files (or of the --ext suffixes), or folders of them")
    p.add_argument("--ext", nargs="+", metavar="SUFFIX",
                   help="the file suffixes to take (default .txt .jsonl); .jsonl is read as JSON lines, any other "
                        "suffix (.md, .py, ...) as plain text; * takes every file (hidden ones in folders left out). "
                        "Binary and non-UTF-8 files are skipped and counted")
    p.add_argument("--out", required=True, type=output_path, help="output folder (train/ and val/ shards)")
    p.add_argument("--val-fraction", type=float_in(0, 1), default=0.01)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=cmd_prepare)

    t = sub.add_parser("train", parents=[common], help="train or fine-tune a text model")
    add_train_args(t, "text", "model, train and text sections: text-tiny")
    t.set_defaults(func=cmd_train)

    g = sub.add_parser("generate", parents=[common], help="continue a prompt, streaming text to stdout")
    add_checkpoint_args(g)
    prompt = g.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", type=escaped_text,
                        help="the text to continue; escapes such as \\n are decoded; - reads it from standard input")
    prompt.add_argument("--prompt-file", metavar="FILE", help="read the prompt from this UTF-8 file, exactly as it is")
    g.add_argument("--stop", action="append", type=escaped_text,
                   help="stop at this string (repeatable; escapes such as \\n are decoded)")
    add_generation_args(g)
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("chat", parents=[common], help="chat on stdin/stdout, the state carried across turns")
    add_checkpoint_args(c)
    add_generation_args(c)
    c.set_defaults(func=cmd_chat)

    e = sub.add_parser("eval", parents=[common], help="loss, bits per byte and loss by position on held-out shards")
    add_checkpoint_args(e)
    e.add_argument("--data", required=True, help="folder written by `eaglefinch text prepare`")
    e.add_argument("--split", default="val")
    e.add_argument("--max-len", type=int_at_least(1), help="window length of the loss-by-position curve (default 4 x training ctx_len)")
    e.add_argument("--batch-size", type=int_at_least(1), default=8)
    e.add_argument("--max-tokens", type=int_at_least(1), help="score at most this many tokens per pass (default: the whole split)")
    e.add_argument("--out", type=output_path, help="folder for eval.json and eval_positions.png (default: the run folder, or the file's folder)")
    e.set_defaults(func=cmd_eval)

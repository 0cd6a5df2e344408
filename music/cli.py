"""`eaglefinch music ...` subcommands: prepare, train, generate, continue, render, eval, long-eval, abc."""
import argparse
import json
from pathlib import Path

from eaglefinch.rwkv_core.cli import (SEED_LIMIT, add_sampling_args, add_train_args, float_in, int_at_least, int_in,
                                        output_path, sampler_from)

from .tokenizer import MAX_BPM, MIN_BPM


def cmd_prepare(args):
    from .corpus import default_midi_folder
    from .prepare import prepare
    from .tokenizer import MidiTokenizer, TokenizerConfig

    folder = args.folder or default_midi_folder()
    tokenizer = MidiTokenizer(TokenizerConfig(beat_relative=args.beat_relative, conditioning=args.conditioning))
    prepare(folder, args.out, tokenizer, transpositions=args.transpose, tempo_factors=args.tempo,
            val_fraction=args.val_fraction, overwrite=args.overwrite)


def cmd_train(args):
    from .train import train_music
    train_music(args.config, args.data, args.out, max_steps=args.max_steps, resume=args.resume, seed=args.seed,
                init=args.init, deepspeed_config=args.deepspeed)


def cmd_generate(args):
    """`generate`, and `continue` (its prompt_midi is the positional IN.mid)."""
    from .audio import check_audio, render_wav
    from .conditioning import condition
    from .generate import generate_music, prompt_ids
    from .metrics import piece_report
    from .pianoroll import save_midi_and_pianoroll
    from .run import MusicRun
    from .tokenizer import midi_to_notes

    soundfont = check_audio(args.soundfont) if args.audio else None  # a missing FluidSynth costs no generation
    model, tokenizer = MusicRun.open(args.checkpoint).load()
    prompt = prompt_ids(tokenizer, args.prompt_midi)  # before anything is written: a bad prompt leaves no file
    prompt, sampler = condition(tokenizer, prompt, sampler_from(args), instruments=args.instruments or (),
                                bpm=args.tempo, key=args.key)
    ids = generate_music(model, tokenizer, [prompt], args.seconds, sampler, seed=args.seed,
                         stop_at_end=args.stop_at_end, progress=True)[0]
    midi_path, png_path = save_midi_and_pianoroll(tokenizer.decode(ids), args.out, title=Path(args.out).name)
    # the length and notes of the file as written, prompt included
    print(f"wrote {midi_path}: {piece_report(midi_to_notes(midi_path))} "
          f"({tokenizer.count_notes(ids[len(prompt):])} new notes, {len(ids) - len(prompt)} tokens); {png_path}")
    if args.audio:
        print(f"wrote {render_wav(midi_path, args.audio, soundfont)}")


def cmd_render(args):
    import wave

    from .audio import render_wav

    path = render_wav(args.midi, args.out, args.soundfont)
    with wave.open(str(path)) as wav:
        print(f"wrote {path}: {wav.getnframes() / wav.getframerate():.1f} s of audio")


def cmd_eval(args):
    from .evaluate import evaluate_music, save_results, summary
    from .run import MusicRun

    run = MusicRun.open(args.checkpoint)
    model, tokenizer = run.load()
    results = evaluate_music(model, tokenizer, args.data, args.split, ctx_len=run.ctx_len or model.cfg.ctx_len,
                             batch_size=args.batch_size, max_tokens=args.max_tokens, samples=args.samples,
                             seconds=args.seconds, sampler=sampler_from(args), seed=args.seed)
    out = Path(args.out) if args.out else run.folder
    out.mkdir(exist_ok=True)
    path = save_results(results, out)
    print(summary(results))
    print(f"wrote {path}")


def cmd_long_eval(args):
    from .longform import long_eval, save_long_eval, summary
    from .run import MusicRun

    run = MusicRun.open(args.checkpoint)
    model, tokenizer = run.load()
    out = Path(args.out) if args.out else run.folder
    out.mkdir(exist_ok=True)
    results = long_eval(model, tokenizer, args.data, args.split, ctx_len=run.ctx_len or model.cfg.ctx_len,
                        windows=args.windows, seconds=args.seconds, segment=args.segment, sampler=sampler_from(args),
                        seed=args.seed, batch_size=args.batch_size, max_tokens=args.max_tokens)
    json_path, png_path = save_long_eval(results, out)
    print(summary(results))
    print(f"wrote {json_path} and {png_path}")


def cmd_abc(args):
    from .abc import compare_archs, write_abc_data

    data = Path(args.data) if args.data else Path(args.out) / "data"
    if not data.exists():
        stats = write_abc_data(data, val_fraction=args.val_fraction)
        print(f"ABC tunes: {stats['train']['docs']:,} train, {stats['val']['docs']:,} val -> {data}")
    results = compare_archs(args.config, data, args.out, max_steps=args.max_steps, seed=args.seed,
                            eval_tokens=args.eval_tokens)
    print(json.dumps({arch: results[arch]["bits_per_byte"] for arch in ("eagle", "finch")}))
    print(f"wrote {Path(args.out) / 'abc.json'}")


def _parsed_by(parse):
    """An argparse type from a parser that raises ValueError with the message to show."""
    def argument_type(text):
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return argument_type


def instrument_list(text):
    from .conditioning import parse_instruments
    return _parsed_by(parse_instruments)(text)


def key_name(text):
    from .conditioning import key_index
    return _parsed_by(key_index)(text)


def add_piece_args(parser):
    """The options of `generate` and `continue`: the run, the outputs, the length and the sampler."""
    parser.add_argument("--checkpoint", required=True, help="a music run folder")
    parser.add_argument("--out", required=True, type=output_path, help="the .mid to write; the .png goes beside it")
    parser.add_argument("--seconds", type=float_in(0, 3600, low_open=True), default=30.0, help="length of the continuation")
    parser.add_argument("--stop-at-end", action="store_true",
                        help="end the piece where the model ends it (its <end>), if that comes before --seconds")
    parser.add_argument("--audio", metavar="OUT.wav", type=output_path,
                        help="also render the piece to this WAV (FluidSynth and a General MIDI SoundFont)")
    parser.add_argument("--soundfont", metavar="SF2", help="for --audio (default: the system's General MIDI SoundFont)")
    parser.add_argument("--instruments", type=instrument_list, metavar="LIST",
                        help="play only these, e.g. piano,violin,cello (GM names, drums, or programs 0-127): other "
                             "instruments are banned while sampling; a --conditioning run also gets them in its header")
    parser.add_argument("--tempo", type=float_in(MIN_BPM, MAX_BPM), metavar="BPM", help="ask for this tempo (a --conditioning run)")
    parser.add_argument("--key", type=key_name, help="ask for this key, e.g. D, Bm, F#, Ebm (a --conditioning run)")
    add_sampling_args(parser)


def add_commands(parser, common):
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("prepare", parents=[common], help="tokenize a folder of MIDI files into shards")
    p.add_argument("folder", nargs="?", help="folder of .mid/.midi files (default: the Bach chorales of music21)")
    p.add_argument("--out", required=True, type=output_path, help="output folder (train/ and val/ shards, stats.json)")
    p.add_argument("--transpose", type=int_in(-24, 24), nargs="+", default=[-3, -2, -1, 0, 1, 2, 3],
                   help="semitones of the training copies")
    p.add_argument("--tempo", type=float_in(0.25, 4.0), nargs="+", default=[0.9, 1.0, 1.1], help="speed factors of the training copies")
    p.add_argument("--val-fraction", type=float_in(0, 1), default=0.1)
    p.add_argument("--beat-relative", action="store_true", help="count time in beats instead of 8 ms steps")
    p.add_argument("--conditioning", action="store_true",
                   help="open every piece with a header of its instruments, tempo and key, to ask for them when generating")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output folder (the old one is removed only once the new one is complete)")
    p.set_defaults(func=cmd_prepare)

    t = sub.add_parser("train", parents=[common], help="train or fine-tune a music model")
    add_train_args(t, "music", "model, train and music sections: music-tiny")
    t.set_defaults(func=cmd_train)

    g = sub.add_parser("generate", parents=[common], help="write a generated .mid and its piano roll (.png)")
    g.add_argument("--prompt-midi", help="continue this MIDI file (default: start a new piece)")
    add_piece_args(g)
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("continue", parents=[common],
                       help="read a whole MIDI file of any length into the state, then continue it")
    c.add_argument("prompt_midi", metavar="IN.mid", help="the piece to continue (read in chunks, the state carried)")
    add_piece_args(c)
    c.set_defaults(func=cmd_generate)

    r = sub.add_parser("render", parents=[common], help="a MIDI file to a WAV, with FluidSynth and a General MIDI SoundFont")
    r.add_argument("midi", metavar="IN.mid")
    r.add_argument("out", metavar="OUT.wav", type=output_path)
    r.add_argument("--soundfont", metavar="SF2", help="default: the system's General MIDI SoundFont (fluid-soundfont-gm)")
    r.set_defaults(func=cmd_render)

    e = sub.add_parser("eval", parents=[common], help="held-out loss per token and note; generated vs held-out statistics")
    e.add_argument("--checkpoint", required=True, help="a music run folder")
    e.add_argument("--data", required=True, help="folder written by `eaglefinch music prepare`")
    e.add_argument("--split", default="val")
    e.add_argument("--batch-size", type=int_at_least(1), default=8)
    e.add_argument("--max-tokens", type=int_at_least(1), help="score at most this many tokens (default: the whole split)")
    e.add_argument("--samples", type=int_at_least(1), default=4, help="pieces to generate for the statistics")
    e.add_argument("--seconds", type=float_in(0, 3600, low_open=True), default=20.0, help="length of each generated piece")
    e.add_argument("--out", type=output_path, help="folder for eval.json (default: the run folder)")
    add_sampling_args(e, seed=0)
    e.set_defaults(func=cmd_eval)

    lg = sub.add_parser("long-eval", parents=[common],
                        help="past the training window: held-out loss by position, a long piece's density and pitch drift")
    lg.add_argument("--checkpoint", required=True, help="a music run folder")
    lg.add_argument("--data", required=True, help="folder written by `eaglefinch music prepare`")
    lg.add_argument("--split", default="val")
    lg.add_argument("--windows", type=int_at_least(1), default=8, help="held-out windows this many ctx_len long")
    lg.add_argument("--batch-size", type=int_at_least(1), default=8)
    lg.add_argument("--max-tokens", type=int_at_least(1), help="score at most this many held-out tokens (default: all)")
    lg.add_argument("--seconds", type=float_in(0, 3600, low_open=True), default=600.0, help="length of the generated piece")
    lg.add_argument("--segment", type=float_in(0, 3600, low_open=True), default=30.0, help="seconds per segment")
    lg.add_argument("--out", type=output_path, help="folder for long_eval.json and long_eval.png (default: the run folder)")
    add_sampling_args(lg, seed=0)
    lg.set_defaults(func=cmd_long_eval)

    a = sub.add_parser("abc", parents=[common], help="byte-level ABC models: Eagle vs Finch bits per byte")
    a.add_argument("--config", required=True, help="a shipped config's name or a JSON file with model/train sections (abc-tiny)")
    a.add_argument("--out", required=True, type=output_path, help="folder for the eagle/ and finch/ runs and abc.json")
    a.add_argument("--data", help="byte shards (default: <out>/data, written from music21's tunes if absent)")
    a.add_argument("--val-fraction", type=float_in(0, 1), default=0.05)
    a.add_argument("--max-steps", type=int_at_least(1))
    a.add_argument("--seed", type=int_at_least(0, SEED_LIMIT))
    a.add_argument("--eval-tokens", type=int_at_least(1), help="score at most this many held-out tokens (default: all)")
    a.set_defaults(func=cmd_abc)

"""The `eaglefinch` command: one subcommand group per domain (text, music, visual)."""
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
    add_music(domains.add_parser("music", help="music models (MIDI and ABC): prepare, train, generate, eval, abc", parents=[common]), common)
    from eaglefinch.visual.cli import add_commands as add_visual
    add_visual(domains.add_parser("visual", help="image-to-text models: shapes, prepare, clip-train, train, caption, eval",
                                  parents=[common]), common)
    from eaglefinch.serve.cli import add_command as add_serve
    add_serve(domains.add_parser("serve", help="an OpenAI-compatible HTTP server for a text, visual or music model", parents=[common]))
    return parser


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

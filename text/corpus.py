"""The chatterbot-corpus dialogues as a small offline multilingual corpus for the text demo.

The `chatterbot-corpus` package (1.3.3) ships 237 YAML files, `data/<language>/<topic>.yml`, in 28
languages, each `{"categories": [...], "conversations": [[turn, turn, ...], ...]}`: 7,644
conversations, about 650K characters. Each conversation becomes one document in RWKV's chat
format, turns alternating "User: " and "Assistant: " and separated by a blank line:

    User: Hello

    Assistant: Hi
"""
import json
import re
from contextlib import ExitStack
from pathlib import Path

import yaml

from eaglefinch.rwkv_core.data import DataError, folder_written_whole

ROLES = ("User", "Assistant")
# libyaml's safe loader is ~10x faster than the pure-Python one, when PyYAML was built with it
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def corpus_root() -> Path:
    """Folder of the installed chatterbot-corpus YAML files, one subfolder per language."""
    try:
        import chatterbot_corpus
    except ImportError:
        raise DataError("chatterbot-corpus is not installed: pip install 'eaglefinch[data]'") from None
    return Path(chatterbot_corpus.__file__).parent / "data"


def format_conversation(turns) -> str:
    """Join turns into "User: ...\\n\\nAssistant: ...", alternating roles.

    A blank line separates turns in RWKV's chat format, so blank lines inside a turn (code
    samples) shrink to one newline.
    """
    lines = []
    for i, turn in enumerate(turns):
        text = re.sub(r"\n\s*\n", "\n", str(turn).strip())
        lines.append(f"{ROLES[i % 2]}: {text}")
    return "\n\n".join(lines)


def chatterbot_corpus_texts():
    """Yield (language, text) for every conversation, in sorted file order.

    The language is the folder name ("english", "traditionalchinese", ...). A few entries in the
    YAML are a bare string instead of a list of turns (an indentation slip in the source); they
    are kept as a single "User:" turn.
    """
    for path in sorted(corpus_root().glob("*/*.yml")):
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_YAML_LOADER)
        for conversation in data.get("conversations") or []:
            turns = [conversation] if isinstance(conversation, str) else conversation
            turns = [t for t in turns if t is not None and str(t).strip()]
            if turns:
                yield path.parent.name, format_conversation(turns)


def write_default_corpus(out_dir) -> dict:
    """Write the corpus as `<out_dir>/<language>.jsonl`, one {"text", "language"} object per line.

    out_dir must be absent or empty; the files appear all at once (written to a temporary folder
    that is renamed into place). Returns {language: {"docs": n, "chars": n}}.
    """
    stats = {}
    with folder_written_whole(out_dir) as tmp_dir, ExitStack() as files:
        handles = {}
        for language, text in chatterbot_corpus_texts():
            if language not in handles:
                handles[language] = files.enter_context(open(tmp_dir / f"{language}.jsonl", "w", encoding="utf-8"))
                stats[language] = {"docs": 0, "chars": 0}
            handles[language].write(json.dumps({"text": text, "language": language}, ensure_ascii=False) + "\n")
            stats[language]["docs"] += 1
            stats[language]["chars"] += len(text)
    return stats

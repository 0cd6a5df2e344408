"""prepare() on small corpora with bad data in them, and the chatterbot demo corpus, read back token by token."""
import collections
import os
import io
import json
import re

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from eaglefinch.rwkv_core.data import DataError, TokenDataset, split_of
from eaglefinch.text.corpus import chatterbot_corpus_texts, corpus_root, write_default_corpus
from eaglefinch.text.prepare import prepare, txt_documents


class ByteTokenizer:
    """Stand-in for WorldTokenizer: UTF-8 bytes shifted by one, so id 0 stays the separator."""

    def encode(self, text):
        return [b + 1 for b in text.encode("utf-8")]

    def decode(self, ids):
        return bytes(i - 1 for i in ids).decode("utf-8")


def read_docs(out_dir, split):
    """The documents of one split, decoded, in stream order."""
    if split == "val" and not (out_dir / "val").exists():
        return []  # prepare leaves out an empty val split
    ds = TokenDataset(out_dir, split)
    stream = ds.window(0, len(ds))
    ends = np.flatnonzero(stream == 0)
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [ByteTokenizer().decode(stream[s:e].tolist()) for s, e in zip(starts, ends)]


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def messy_corpus(tmp_path):
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("Hello world.\n", encoding="utf-8")
    (root / "sub" / "b.txt").write_text("Second doc\n\nwith two paragraphs, ünïcode ✓\n", encoding="utf-8")
    (root / "empty.txt").write_text("")
    (root / "blank.txt").write_text("  \n\n\t\n")
    (root / "binary.txt").write_bytes(b"abc\x00def")
    (root / "latin1.txt").write_bytes("café crème".encode("latin-1"))
    (root / "notes.md").write_text("not a supported suffix: ignored")
    lines = ['{"text": "one"}', "not json", '{"text": 5}', "", '{"text": ""}', '{"text": "two", "id": 3}', "[1, 2]"]
    (root / "c.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_prepare_counts_and_skips_bad_data(tmp_path, messy_corpus, capsys):
    out = tmp_path / "data"
    stats = prepare([messy_corpus], out, ByteTokenizer(), val_fraction=0.5, progress=False)
    expected = {
        "corpus/a.txt": "Hello world.\n",
        "corpus/sub/b.txt": "Second doc\n\nwith two paragraphs, ünïcode ✓\n",
        "corpus/c.jsonl#1": "one",
        "corpus/c.jsonl#6": "two",
    }
    assert stats["files"] == 3 and stats["docs"] == 4
    assert stats["skipped"] == {"empty_file": 2, "binary_file": 1, "invalid_utf8": 1, "bad_jsonl_line": 3, "empty_doc": 1}
    assert stats["tokens"] == sum(len(t.encode("utf-8")) + 1 for t in expected.values())
    # every document is in the split its key hashes to, in file order
    for split in ("train", "val"):
        want = [text for key, text in expected.items() if split_of(key, 0.5) == split]
        assert read_docs(out, split) == want
        assert stats["splits"][split]["docs"] == len(want)
    assert json.loads((out / "stats.json").read_text()) == stats
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 8
    assert any("binary.txt: binary file" in w for w in warnings)
    assert any("c.jsonl:2: malformed JSONL line" in w for w in warnings)


def test_missing_input_fails_before_writing(tmp_path, messy_corpus):
    with pytest.raises(DataError, match="does not exist: .*nope.txt"):
        prepare([messy_corpus, tmp_path / "nope.txt"], tmp_path / "data", ByteTokenizer(), progress=False)
    with pytest.raises(DataError, match="unsupported input file"):
        prepare([messy_corpus / "notes.md"], tmp_path / "data", ByteTokenizer(), progress=False)
    assert leftovers(tmp_path) == ["corpus"]


def test_no_usable_document_leaves_no_output(tmp_path, messy_corpus):
    inputs = [messy_corpus / n for n in ("empty.txt", "binary.txt", "latin1.txt")]
    with pytest.raises(DataError, match="no usable document"):
        prepare(inputs, tmp_path / "data", ByteTokenizer(), progress=False)
    assert leftovers(tmp_path) == ["corpus"]


class FailingTokenizer(ByteTokenizer):
    def __init__(self, fail_on, error):
        self.fail_on, self.error = fail_on, error

    def encode(self, text):
        if self.fail_on in text:
            return self.error()
        return super().encode(text)


@pytest.mark.parametrize(
    "error, raises",
    [(lambda: 1 / 0, ZeroDivisionError), (lambda: [70000], DataError)],  # a crash; ids too big for uint16
)
def test_failure_mid_corpus_leaves_no_output(tmp_path, messy_corpus, error, raises):
    with pytest.raises(raises):
        prepare([messy_corpus], tmp_path / "data", FailingTokenizer("two", error), progress=False)
    assert leftovers(tmp_path) == ["corpus"]


def test_output_is_deterministic_and_replaced_only_on_request(tmp_path, messy_corpus):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        prepare([messy_corpus], out, ByteTokenizer(), val_fraction=0.5, shard_tokens=7, metadata={"v": 1}, progress=False)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) > 4
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    with pytest.raises(DataError, match="not an empty folder"):
        prepare([messy_corpus / "a.txt"], a, ByteTokenizer(), progress=False)
    prepare([messy_corpus / "a.txt"], a, ByteTokenizer(), val_fraction=0.0, overwrite=True, progress=False)
    assert read_docs(a, "train") == ["Hello world.\n"] and leftovers(a) == ["stats.json", "train"]
    assert leftovers(tmp_path) == ["a", "b", "corpus"]


def test_large_txt_files_become_several_documents_of_one_split(tmp_path):
    paragraphs = [f"Paragraph {i}. " + "word " * (i % 7) + "\nsecond line\n" for i in range(40)]
    text = "\n".join(paragraphs)
    (tmp_path / "big.txt").write_text(text, encoding="utf-8")
    stats = prepare([tmp_path / "big.txt"], tmp_path / "data", ByteTokenizer(), max_doc_chars=100, progress=False)
    split = split_of("big.txt", 0.01)
    docs = read_docs(tmp_path / "data", split)
    assert stats["docs"] == len(docs) > 5 and "".join(docs) == text


# any text but newlines (the only line break of a binary file), NUL and lone surrogates (not UTF-8)
LINE_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\x00")


def lines_of(text):
    return re.findall(r"[^\n]*\n|[^\n]+$", text)


@settings(max_examples=100, deadline=None)
@given(
    lines=st.lists(st.one_of(st.just("\n"), st.text(LINE_CHARS, max_size=30).map(lambda s: s + "\n"))),
    tail=st.text(LINE_CHARS, max_size=5),
    max_doc_chars=st.integers(1, 60),
)
def test_txt_documents_cut_at_paragraphs(lines, tail, max_doc_chars):
    text = "".join(lines) + tail
    docs = list(txt_documents(io.BytesIO(text.encode("utf-8")), max_doc_chars))
    assert "".join(docs) == text

    def may_end(piece):  # the documented rule: long enough and at a blank line, or twice too long
        last_line = lines_of(piece)[-1]
        return piece.endswith("\n") and ((len(piece) >= max_doc_chars and last_line.strip() == "") or len(piece) >= 2 * max_doc_chars)

    for i, doc in enumerate(docs):
        doc_lines = lines_of(doc)
        # each document ends at the first line end where the rule allows it
        assert not any(may_end("".join(doc_lines[:k])) for k in range(1, len(doc_lines)))
        assert may_end(doc) or i == len(docs) - 1


# ---- chatterbot demo corpus


def test_chatterbot_corpus_counts_every_conversation():
    got = collections.Counter(language for language, _ in chatterbot_corpus_texts())
    # independent count from the raw YAML: every top-level "- " item after "conversations:"
    raw = collections.Counter()
    for path in corpus_root().glob("*/*.yml"):
        lines = path.read_text(encoding="utf-8").splitlines()
        raw[path.parent.name] += sum(line.startswith("- ") for line in lines[lines.index("conversations:") + 1 :])
    assert got == raw and len(got) == 28


def test_write_default_corpus_then_prepare(tmp_path):
    texts = list(chatterbot_corpus_texts())
    assert texts[0] == ("bengali", texts[0][1]) and all(t.startswith("User: ") for _, t in texts)
    assert "User: Hello\n\nAssistant: Hi" in [t for lang, t in texts if lang == "english"]
    stats = write_default_corpus(tmp_path / "corpus")
    assert len(stats) == 28 and sum(s["docs"] for s in stats.values()) == len(texts)
    assert leftovers(tmp_path / "corpus") == sorted(f"{lang}.jsonl" for lang in stats)
    with pytest.raises(DataError, match="not an empty folder"):
        write_default_corpus(tmp_path / "corpus")
    prepared = prepare([tmp_path / "corpus"], tmp_path / "data", ByteTokenizer(), progress=False)
    assert prepared["docs"] == len(texts)
    assert sorted(read_docs(tmp_path / "data", "train") + read_docs(tmp_path / "data", "val")) == sorted(t for _, t in texts)


# ---- any text files: --ext


@pytest.fixture
def source_tree(tmp_path):
    root = tmp_path / "project"
    (root / "pkg").mkdir(parents=True)
    (root / "README.md").write_text("# Project\n\nSome words.\n", encoding="utf-8")
    (root / "pkg" / "main.py").write_text("print('hi')\n", encoding="utf-8")
    (root / "pkg" / "compiled.py").write_bytes(b"\x00\x01binary with a .py name")
    (root / "Makefile").write_text("all:\n\ttrue\n", encoding="utf-8")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n", encoding="utf-8")
    (root / "notes.txt").write_text("notes\n", encoding="utf-8")
    return root


def test_other_suffixes_are_read_as_text_and_binary_files_skipped(tmp_path, source_tree, capsys):
    stats = prepare([source_tree], tmp_path / "data", ByteTokenizer(), val_fraction=0.0, progress=False,
                    extensions=[".md", "py"])
    assert read_docs(tmp_path / "data", "train") == ["# Project\n\nSome words.\n", "print('hi')\n"]
    assert stats["files"] == 2 and stats["skipped"]["binary_file"] == 1
    assert "compiled.py: binary file, skipped" in capsys.readouterr().err
    with pytest.raises(DataError, match="unsupported input file .*notes.txt: expected .md or .py"):
        prepare([source_tree / "notes.txt"], tmp_path / "other", ByteTokenizer(), extensions=[".md", ".py"])


def test_every_file_but_hidden_ones_with_a_star(tmp_path, source_tree):
    stats = prepare([source_tree], tmp_path / "data", ByteTokenizer(), val_fraction=0.0, progress=False,
                    extensions=["*"])
    assert sorted(read_docs(tmp_path / "data", "train")) == sorted(
        ["# Project\n\nSome words.\n", "print('hi')\n", "all:\n\ttrue\n", "notes\n"])
    assert stats["skipped"]["binary_file"] == 1


def test_prepare_command_takes_ext(tmp_path, source_tree):
    from eaglefinch.cli import main
    assert main(["text", "prepare", str(source_tree), "--out", str(tmp_path / "data"), "--ext", ".md", ".py",
                 "--val-fraction", "0"]) == 0
    assert json.loads((tmp_path / "data" / "stats.json").read_text())["files"] == 2


def test_a_file_name_that_is_not_utf8(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    name = os.fsdecode(b"caf\xe9.txt")  # a Latin-1 file name: not UTF-8, so it arrives with a surrogate
    (folder / name).write_text("text in a file with a Latin-1 name\n", encoding="utf-8")
    stats = prepare([folder], tmp_path / "data", ByteTokenizer(), val_fraction=0.0, progress=False)
    assert stats["docs"] == 1

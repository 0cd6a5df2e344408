"""World tokenizer: the vocabulary file, ids of both encoders (pyrwkv-tokenizer and ours, the
reference) against the official rwkv package, round trips, streaming decode and errors."""
import hashlib
import random
from pathlib import Path

import numpy as np
import pytest
import rwkv
from hypothesis import given, settings, strategies as st
from rwkv.rwkv_tokenizer import TRIE_TOKENIZER

import eaglefinch.text.tokenizer as tokenizer_module
from eaglefinch.text.tokenizer import VOCAB_FILE, StreamDecoder, TokenizerError, WorldTokenizer

OFFICIAL_VOCAB = Path(rwkv.__file__).parent / "rwkv_vocab_v20230424.txt"
VOCAB_SHA256 = "8324476023347dec2964625ccb2075c864d250a9c6d9a74f36daba628de8c008"


@pytest.fixture(scope="module")
def tok():
    return WorldTokenizer()


@pytest.fixture(scope="module")
def fast():
    """The compiled encoder: a dependency wherever its wheel installs, so the tests need it."""
    tokenizer = WorldTokenizer(backend="pyrwkv")
    assert tokenizer.backend == WorldTokenizer().backend == "pyrwkv"  # the default where installed
    return tokenizer


@pytest.fixture(scope="module")
def reference():
    """Ours: the fallback, and the reference the compiled one is held to."""
    return WorldTokenizer(backend="python")


@pytest.fixture(scope="module")
def official():
    return TRIE_TOKENIZER(str(OFFICIAL_VOCAB))


def test_shipped_vocab_is_the_official_file(tok):
    assert hashlib.sha256(VOCAB_FILE.read_bytes()).hexdigest() == VOCAB_SHA256
    assert tok.vocab_path == VOCAB_FILE


def test_every_token_decodes_like_official(tok, official):
    assert sorted(official.idx2token) == list(range(1, 65530))
    assert [tok.decode_bytes([i]) for i in range(1, 65530)] == [official.idx2token[i] for i in range(1, 65530)]
    assert tok.decode_bytes([tok.eot_id]) == b"" and tok.vocab_size == 65536


@pytest.mark.parametrize("text, ids", [
    ("\n\n", [261]),
    (" the", [22590]),
    ("User:", [24281, 59]),
    ("Assistant:", [5585, 41693, 59]),
    ("Hello world! 你好\n\nUser:", [33155, 40213, 34, 33, 10464, 11685, 261, 24281, 59]),
    ("", []),
])
def test_reference_examples(tok, text, ids):
    assert tok.encode(text) == ids
    assert tok.decode(ids) == text


# code point ranges for random text; surrogates (D800-DFFF) are left out: they have no UTF-8
SCRIPTS = {
    "latin": [(0x41, 0x5A), (0x61, 0x7A), (0x30, 0x39), (0x21, 0x2F)],
    "latin1": [(0xC0, 0xFF), (0x100, 0x17F)],
    "cjk": [(0x4E00, 0x9FFF), (0x3000, 0x303F), (0xFF00, 0xFFEF)],
    "kana_hangul": [(0x3040, 0x30FF), (0xAC00, 0xD7A3)],
    "cyrillic": [(0x400, 0x4FF)],
    "arabic": [(0x600, 0x6FF)],
    "devanagari": [(0x900, 0x97F)],
    "emoji": [(0x1F300, 0x1FAFF), (0x2600, 0x27BF), (0xFE0F, 0xFE0F), (0x200D, 0x200D)],
    "control": [(0x00, 0x1F), (0x7F, 0x9F)],
    "any": [(0x0, 0xD7FF), (0xE000, 0x10FFFF)],
}
WHITESPACE = [" ", "\t", "\n", "\r\n", "\r", "\u00a0", "\u3000", "\u2028", "\u200b"]


def random_mixed_string(rng: random.Random, vocab_words: list) -> str:
    """1-6 segments: runs of one script, whitespace runs, or whole vocabulary entries (these
    make long tokens and token boundaries inside words likely)."""
    out = []
    for _ in range(rng.randint(1, 6)):
        kind = rng.choice([*SCRIPTS, "space", "words", "words"])
        if kind == "space":
            out.append("".join(rng.choice(WHITESPACE) for _ in range(rng.randint(1, 20))))
        elif kind == "words":
            out.append("".join(rng.choice(vocab_words) for _ in range(rng.randint(1, 4))))
        else:
            ranges = SCRIPTS[kind]
            out.append("".join(chr(rng.randint(*rng.choice(ranges))) for _ in range(rng.randint(1, 12))))
    return "".join(out)


def test_ids_match_official_on_random_mixed_text(fast, reference, official):
    vocab_words = []
    for token in official.idx2token.values():
        try:
            vocab_words.append(token.decode("utf-8"))
        except UnicodeDecodeError:
            pass
    rng = random.Random(20230424)
    strings = [random_mixed_string(rng, vocab_words) for _ in range(10_000)]
    for s in strings:
        assert reference.encode(s) == fast.encode(s) == official.encode(s), repr(s)
    joined = "".join(strings)
    assert reference.encode(joined) == fast.encode(joined) == official.encode(joined)


@settings(max_examples=300, deadline=None)
@given(st.text())  # st.text() never draws lone surrogates, which UTF-8 cannot encode
def test_roundtrip_and_official_ids(tok, fast, reference, official, s):
    ids = tok.encode(s)
    assert ids == official.encode(s) == fast.encode(s) == reference.encode(s)
    assert all(1 <= i <= 65529 for i in ids)
    assert tok.decode(ids) == s
    assert tok.decode_bytes(ids) == s.encode("utf-8")


@pytest.mark.parametrize("backend", ["pyrwkv", "python"])
def test_lone_surrogate_is_a_clear_error(backend):
    tok = WorldTokenizer(backend=backend)
    with pytest.raises(TokenizerError, match="surrogate.*index 1|index 1.*surrogate"):
        tok.encode("a\ud800b")
    with pytest.raises(TypeError):
        tok.encode(b"bytes")


def test_other_vocabularies_use_our_encoder(tmp_path):
    path = write_vocab(tmp_path / "vocab.txt", [b"hello"])
    assert WorldTokenizer(path).backend == "python"
    with pytest.raises(TokenizerError, match="shipped vocabulary"):
        WorldTokenizer(path, backend="pyrwkv")


def test_decode_accepts_eot_arrays_and_iterators(tok):
    ids = tok.encode("Hello world")
    assert tok.decode([0, *ids, 0]) == "Hello world"
    # numpy arrays and torch tensors both go through .tolist()
    assert tok.decode(np.array(ids)) == tok.decode(iter(ids)) == tok.decode(tuple(ids)) == "Hello world"


@pytest.mark.parametrize("bad", [65530, 65535, 70000, -1, None, "3"])
def test_decode_rejects_ids_outside_the_vocabulary(tok, bad):
    with pytest.raises(TokenizerError, match=f"token id {bad!r} is not in the vocabulary"):
        tok.decode([33155, bad, 59])


def test_decode_invalid_utf8(tok):
    cut = [0xE4 + 1, 0xBD + 1]  # byte tokens: first two bytes of 你 (E4 BD A0)
    assert tok.decode(cut) == "\ufffd"
    with pytest.raises(UnicodeDecodeError):
        tok.decode(cut, errors="strict")


def test_stream_decoder_holds_back_a_split_emoji(tok):
    emoji = [b + 1 for b in "😀".encode()]  # four single-byte tokens
    dec = StreamDecoder(tok)
    assert [dec.feed([i]) for i in emoji] == ["", "", "", "😀"]
    assert dec.flush() == ""
    assert dec.feed([0]) == ""  # end of text has no bytes
    assert dec.feed(emoji[:2]) == "" and dec.flush() == "\ufffd"  # unfinished at the end


@settings(max_examples=200, deadline=None)
@given(ids=st.lists(st.one_of(st.integers(0, 256), st.integers(0, 65529)), max_size=40),
       cuts=st.lists(st.integers(0, 40), max_size=8))
def test_stream_decoder_any_split_equals_one_decode(tok, ids, cuts):
    # ids may spell invalid UTF-8 (byte tokens 1..256 are drawn often): U+FFFD must appear
    # exactly where a one-shot decode puts it
    bounds = sorted({0, len(ids), *(c for c in cuts if c <= len(ids))})
    dec = StreamDecoder(tok)
    streamed = "".join(dec.feed(ids[a:b]) for a, b in zip(bounds, bounds[1:])) + dec.flush()
    assert streamed == tok.decode(ids)


# ---- small hand-made vocabularies: structure of the trie regex, file errors ----

def write_vocab(path: Path, tokens) -> Path:
    """A vocabulary file in the official format: the 256 bytes, then `tokens`."""
    lines = []
    for i, t in enumerate([bytes([b]) for b in range(256)] + list(tokens), start=1):
        try:
            literal = repr(t.decode("utf-8"))
        except UnicodeDecodeError:
            literal = repr(t)
        lines.append(f"{i} {literal} {len(t)}")
    path.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8", newline="")
    return path


def greedy_reference(data: bytes, vocab: set) -> list:
    """Longest match by brute force: the definition, independent of any trie."""
    out, i = [], 0
    longest = max(map(len, vocab))
    while i < len(data):
        n = next(n for n in range(min(longest, len(data) - i), 0, -1) if data[i:i + n] in vocab)
        out.append(data[i:i + n])
        i += n
    return out


@pytest.mark.parametrize("optional", [b"?+", b"?"])  # b"?" is what Python 3.10 gets
def test_dense_small_vocab_matches_brute_force(tmp_path, monkeypatch, optional):
    # 10 letters, 3000 random words: deep nodes with many children, words whose prefixes are
    # not words (the engine must back off to a shorter match), byte-range groups and guards
    monkeypatch.setattr(tokenizer_module, "_OPTIONAL", optional)
    tokenizer_module._trie_regex.cache_clear()
    rng = random.Random(7)
    alphabet = "abcdefghij"
    words = {"".join(rng.choice(alphabet) for _ in range(rng.randint(2, 9))).encode() for _ in range(3000)}
    words |= {b"\xe4\xbd", b"x\xe4", "é".encode()}  # tokens that are not whole characters
    path = write_vocab(tmp_path / "vocab.txt", sorted(words, key=len))
    tok, official = WorldTokenizer(path), TRIE_TOKENIZER(str(path))
    assert tok.backend == "python"
    vocab = set(words) | {bytes([b]) for b in range(256)}
    for _ in range(300):
        s = "".join(rng.choice(alphabet + " xé你") for _ in range(rng.randint(0, 60)))
        ids = tok.encode(s)
        assert [tok.decode_bytes([i]) for i in ids] == greedy_reference(s.encode(), vocab), s
        assert ids == official.encode(s)
    tokenizer_module._trie_regex.cache_clear()  # drop regexes built with the patched constant


@pytest.mark.parametrize("line, problem", [
    ("300 'abc' 4", "has 3 bytes, line says 4"),
    ("300 abc 3", "not a Python literal"),
    ("300 __import__('os').system('echo hacked') 3", "not a Python literal"),
    ("300 123 3", "must be a non-empty str or bytes literal"),
    ("300 '' 0", "must be a non-empty str or bytes literal"),
    ("300 'abc'", "expected '<id> <literal> <byte length>'"),
    ("x3 'abc' 3", "decimal integers"),
    ("70000 'abc' 3", "outside 1..65535"),
    ("1 'abc' 3", "id 1 appears twice"),
    ("300 'a' 1", "already has id 98"),
])
def test_corrupt_vocab_line_is_named(tmp_path, line, problem):
    path = write_vocab(tmp_path / "vocab.txt", [b"hello", b"world"])
    lines = path.read_text(encoding="utf-8").split("\n")
    lines.insert(258, line)  # becomes line 259 of the file
    path.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(TokenizerError, match=f"vocab.txt:259: .*{problem}") as err:
        WorldTokenizer(path)
    assert isinstance(err.value, ValueError)


def test_vocab_without_all_bytes_is_rejected(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("1 'a' 1\n2 'ab' 2\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match="single-byte tokens missing"):
        WorldTokenizer(path)
    with pytest.raises(TokenizerError, match="cannot read vocabulary"):
        WorldTokenizer(tmp_path / "missing.txt")

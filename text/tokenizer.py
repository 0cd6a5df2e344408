"""The RWKV World tokenizer (vocabulary `rwkv_vocab_v20230424`).

Encoding is greedy longest match over the UTF-8 bytes of the text: at each position take the
longest vocabulary entry that the remaining bytes start with. No normalization, no
pre-tokenization, no BOS. The ids are those of the official `rwkv` package's TRIE_TOKENIZER.

Two encoders give the same ids (tested on 10k random mixed-script strings):
* "pyrwkv": the compiled `pyrwkv-tokenizer` package (Rust), used for the shipped vocabulary
  wherever its wheel is installed (a dependency on the platforms that have one);
* "python": ours, the fallback and the reference in tests. The vocabulary is compiled into one
  regular expression over bytes shaped like a trie (nested groups, one per trie node). Python's
  `re` engine runs in C and returns the longest match at each position, so `findall` does the
  whole greedy scan without a Python-level loop.
Decoding is ours in both cases (bytes, for streaming).

    tok = WorldTokenizer()
    tok.encode("Hello world! 你好")      # [33155, 40213, 34, 33, 10464, 11685]
    tok.decode([33155, 40213])           # 'Hello world'
"""
import ast
import codecs
import functools
import importlib.util
import re
import sys
from pathlib import Path

VOCAB_FILE = Path(__file__).with_name("rwkv_vocab_v20230424.txt")

# Possessive `?+` (Python >= 3.11) spares the engine saving backtrack points it never uses:
# nothing follows a token's pattern, so a longer match, once found, is never given up.
_OPTIONAL = b"?+" if sys.version_info >= (3, 11) else b"?"
_END = -1  # trie key marking "a token ends at this node"
_GROUP = 8  # longest plain alternation; more children are split into guarded byte ranges
_GUARD = 8  # a node with this many branches first checks that the next byte starts one


class TokenizerError(ValueError):
    """Bad vocabulary file, text that cannot be encoded, or an id that cannot be decoded."""


def load_vocab(path) -> dict[int, bytes]:
    """Read a World vocabulary file: lines `<id> <python str or bytes literal> <byte length>`.

    Literals are parsed with `ast.literal_eval` (never `eval`). Raises TokenizerError naming the
    line for anything malformed, duplicated, or missing (every single byte must be a token, so
    that any text can be encoded).
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TokenizerError(f"cannot read vocabulary {path}: {e}") from None
    vocab, seen = {}, {}
    # split on "\n" only: str.splitlines would also split on characters such as U+2028
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line:
            continue
        try:
            idx, token = _parse_line(line)
        except ValueError as e:
            raise TokenizerError(f"{path}:{number}: {e}: {line[:80]!r}") from None
        if idx in vocab:
            raise TokenizerError(f"{path}:{number}: id {idx} appears twice")
        if token in seen:
            raise TokenizerError(f"{path}:{number}: token {token!r} already has id {seen[token]}")
        vocab[idx], seen[token] = token, idx
    missing = [b for b in range(256) if bytes([b]) not in seen]
    if missing:
        raise TokenizerError(f"{path}: single-byte tokens missing for bytes {missing[:8]}"
                             f"{'...' if len(missing) > 8 else ''}: some text could not be encoded")
    return vocab


def _parse_line(line: str) -> tuple[int, bytes]:
    first, last = line.find(" "), line.rfind(" ")
    if first <= 0 or last <= first:
        raise ValueError("expected '<id> <literal> <byte length>'")
    idx_field, literal, length_field = line[:first], line[first + 1:last], line[last + 1:]
    if not all(f.isascii() and f.isdigit() for f in (idx_field, length_field)):
        raise ValueError("id and byte length must be decimal integers")
    idx = int(idx_field)
    if not 1 <= idx < WorldTokenizer.vocab_size:
        raise ValueError(f"id {idx} outside 1..{WorldTokenizer.vocab_size - 1}")
    try:
        token = ast.literal_eval(literal)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise ValueError("token is not a Python literal") from None
    if isinstance(token, str):
        try:
            token = token.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("token string is not valid Unicode") from None
    if not isinstance(token, bytes) or not token:
        raise ValueError("token must be a non-empty str or bytes literal")
    if len(token) != int(length_field):
        raise ValueError(f"token has {len(token)} bytes, line says {length_field}")
    return idx, token


def pyrwkv_installed() -> bool:
    """Whether the compiled `pyrwkv-tokenizer` can be imported here."""
    return importlib.util.find_spec("pyrwkv_tokenizer") is not None


@functools.lru_cache(maxsize=1)
def _shipped_vocab() -> dict[int, bytes]:
    """The shipped vocabulary, parsed once per process (it takes a second or two)."""
    return load_vocab(VOCAB_FILE)


class WorldTokenizer:
    """Encode text to World token ids and back.

    vocab_size: 65536, the embedding size of World models (file ids are 1..65529; the rest of
    the rows are padding). eot_id: 0, end of text; it is not in the vocabulary file and
    decodes to nothing.

    backend: "auto" (pyrwkv-tokenizer for the shipped vocabulary where it is installed, else
    ours), "pyrwkv" or "python" (ours: any vocabulary file). `self.backend` says which one encodes.
    """

    vocab_size = 65536
    eot_id = 0

    def __init__(self, vocab_path=None, backend: str = "auto"):
        self.vocab_path = Path(vocab_path) if vocab_path is not None else VOCAB_FILE
        shipped = self.vocab_path == VOCAB_FILE
        vocab = _shipped_vocab() if shipped else load_vocab(self.vocab_path)
        self._id_to_bytes = {self.eot_id: b"", **vocab}
        self.id_limit = max(vocab) + 1  # ids from here to vocab_size are padding rows of the model
        self._bytes_to_id = {token: idx for idx, token in vocab.items()}
        if backend not in ("auto", "pyrwkv", "python"):
            raise ValueError(f"backend must be 'auto', 'pyrwkv' or 'python', got {backend!r}")
        if backend == "pyrwkv" and not (shipped and pyrwkv_installed()):
            raise TokenizerError("the pyrwkv backend needs the pyrwkv-tokenizer package and the shipped vocabulary")
        self.backend = "pyrwkv" if backend == "pyrwkv" or (backend == "auto" and shipped and pyrwkv_installed()) \
            else "python"
        self._encode = None  # made on first encode (the regex takes 1-2 s): decoding does not need it

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`. Lone surrogates (not valid Unicode) raise TokenizerError."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects str, got {type(text).__name__}")
        if self._encode is None:
            self._encode = self._pyrwkv_encoder() if self.backend == "pyrwkv" else self._regex_encoder()
        try:
            return self._encode(text)
        except UnicodeEncodeError as e:
            raise TokenizerError(f"cannot encode {text[e.start]!r} at index {e.start}: a lone surrogate "
                                 f"is not valid Unicode and has no UTF-8 bytes") from None

    def _pyrwkv_encoder(self):
        """pyrwkv-tokenizer's encode, on our copy of the vocabulary file."""
        import pyrwkv_tokenizer
        return pyrwkv_tokenizer.WorldTokenizer(str(self.vocab_path)).encode

    def _regex_encoder(self):
        """Our encode: the trie regex finds the tokens' bytes, a dict gives their ids."""
        regex, to_id = _trie_regex(tuple(self._bytes_to_id)), self._bytes_to_id
        return lambda text: list(map(to_id.__getitem__, regex.findall(text.encode("utf-8"))))

    def decode_bytes(self, ids) -> bytes:
        """The bytes of `ids` (a sequence of ints, or a tensor/array); eot_id gives no bytes."""
        if hasattr(ids, "tolist"):  # torch tensors, numpy arrays
            ids = ids.tolist()
        elif not isinstance(ids, (list, tuple)):
            ids = list(ids)  # an iterator would be used up before an error could be located
        try:
            return b"".join(map(self._id_to_bytes.__getitem__, ids))
        except (KeyError, TypeError):
            bad = next(i for i in ids if not (isinstance(i, int) and i in self._id_to_bytes))
            raise TokenizerError(f"token id {bad!r} is not in the vocabulary "
                                 f"(valid: 0..{max(self._id_to_bytes)})") from None

    def decode(self, ids, errors="replace") -> str:
        """Text of `ids`. Bytes that are not valid UTF-8 (a character cut off by the last token)
        become U+FFFD with errors="replace"; errors="strict" raises UnicodeDecodeError."""
        return self.decode_bytes(ids).decode("utf-8", errors=errors)


class StreamDecoder:
    """Turns ids arriving one piece at a time into text, for streaming generation.

    `feed` returns the text completed so far; the first bytes of a character whose remaining
    bytes come in a later token are held back instead of being shown as U+FFFD.

    tokenizer: anything with `decode_bytes(ids) -> bytes` (WorldTokenizer, SubsetTokenizer).
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, ids) -> str:
        """Text completed by `ids`; bytes that cannot become valid UTF-8 give U+FFFD."""
        return self._utf8.decode(self.tokenizer.decode_bytes(ids))

    def flush(self) -> str:
        """What is still held back (U+FFFD for an unfinished character); resets the decoder."""
        return self._utf8.decode(b"", final=True)


@functools.lru_cache(maxsize=4)  # tokenizers of one vocabulary share the regex
def _trie_regex(tokens: tuple) -> "re.Pattern[bytes]":
    """One regex over bytes whose match at any position is the longest token starting there."""
    root = {}
    for token in tokens:
        node = root
        for byte in token:
            node = node.setdefault(byte, {})
        node[_END] = True
    pattern, _, _ = _node_pattern(root, is_root=True)
    return re.compile(pattern)


def _node_pattern(node: dict, is_root=False) -> tuple[bytes, int, str]:
    """Pattern for what may follow a trie node, the number of tokens below the node, and the
    pattern's shape: "atom" (one byte or class), "seq" (no top-level `|`) or "alt".

    A child that is a token with nothing below it is a leaf: all leaves share one character
    class. Every other child is its byte followed by its own children's pattern, made optional
    if the child is itself a token. The engine tries a child's continuation before stopping
    there, so the first match found is the longest.
    """
    leaves, branches, count = [], [], 0
    for byte, child in node.items():
        if byte == _END:
            continue
        if len(child) == 1 and _END in child:
            leaves.append(byte)
            count += 1
            continue
        inner, below, shape = _node_pattern(child)
        if _END in child:
            inner = inner + _OPTIONAL if shape == "atom" else b"(?:" + inner + b")" + _OPTIONAL
        elif shape == "alt":
            inner = b"(?:" + inner + b")"
        branches.append((byte, below, _byte(byte) + inner))
        count += below
    count += _END in node
    parts = [(_byte_class(leaves), "atom")] if leaves else []
    if branches:
        alternation, shape = _alternation(branches), ("seq" if len(branches) == 1 else "alt")
        if len(branches) >= _GUARD and not is_root:
            # the token usually ends here: fail at once instead of testing every branch's byte
            alternation = b"(?=" + _byte_class([b for b, _, _ in branches]) + b")(?:" + alternation + b")"
            shape = "seq"
        parts.append((alternation, shape))
    if len(parts) == 1:
        return parts[0][0], count, parts[0][1]
    return b"|".join(p for p, _ in parts), count, "alt"


def _alternation(branches) -> bytes:
    """`a|b|...` of (byte, tokens below, pattern) triples, most tokens below first (a proxy for
    the most common prefix).

    `re` tests alternatives one by one, each in a different part of a 2 MB program; past _GROUP
    of them, they are split into contiguous byte ranges behind a lookahead each, so a byte is
    found after a few range tests (fewer cache misses for more instructions: a net win on text
    with many scripts).
    """
    if len(branches) <= _GROUP:
        return b"|".join(p for _, _, p in sorted(branches, key=lambda b: -b[1]))
    branches = sorted(branches)
    size = -(-len(branches) // _GROUP)
    groups = [branches[i:i + size] for i in range(0, len(branches), size)]
    groups.sort(key=lambda g: -sum(below for _, below, _ in g))
    return b"|".join(
        b"(?=[" + _byte(g[0][0]) + b"-" + _byte(g[-1][0]) + b"])(?:" + _alternation(g) + b")"
        if len(g) > 1 else g[0][2]
        for g in groups)


def _byte(b: int) -> bytes:
    return re.escape(bytes([b]))


def _byte_class(byte_values) -> bytes:
    """One byte, or a class like [a-z_] with runs of 3 or more written as ranges."""
    values = sorted(byte_values)
    if len(values) == 1:
        return _byte(values[0])
    out, i = [], 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        if j - i >= 2:
            out += [_byte(values[i]), b"-", _byte(values[j])]
        else:
            out += [_byte(v) for v in values[i:j + 1]]
        i = j + 1
    return b"[" + b"".join(out) + b"]"

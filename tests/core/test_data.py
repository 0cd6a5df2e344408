"""Token shards, random and ordered windows, the train/val split and binidx, checked against plain numpy."""
import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from eaglefinch.rwkv_core.data import BinidxDataset, DataError, ShardWriter, TokenDataset, read_binidx, split_of


def write_split(folder, docs, shard_tokens, split="train", metadata=None):
    with ShardWriter(folder, split, shard_tokens=shard_tokens, metadata=metadata) as w:
        for doc in docs:
            w.add(doc)
    return TokenDataset(folder, split)


def stream_of(docs):
    """The token stream the shards must hold: each document, then the separator 0."""
    return np.array([t for doc in docs for t in [*doc, 0]], dtype=np.int64)


def counting_docs(lengths):
    """Documents of consecutive ids 1, 2, 3, ...: every non-separator token appears once in the stream."""
    docs, next_id = [], 1
    for n in lengths:
        docs.append(list(range(next_id, next_id + n)))
        next_id += n
    return docs


def window_start(stream, row):
    """Where `row` starts in `stream`, from its first non-separator token (ids are unique)."""
    j = int(np.flatnonzero(row)[0])
    return int(np.flatnonzero(stream == row[j])[0]) - j


# ---- writer and reader round trip


@settings(max_examples=40, deadline=None)
@given(
    docs=st.lists(st.lists(st.integers(1, 65535), min_size=1, max_size=20), min_size=1, max_size=15),
    shard_tokens=st.integers(1, 40),
)
def test_round_trip_across_shards(tmp_path_factory, docs, shard_tokens):
    folder = tmp_path_factory.mktemp("ds")
    ds = write_split(folder, docs, shard_tokens, metadata={"vocab_size": 65536, "tokenizer": "x"})
    expected = stream_of(docs)
    assert len(ds) == len(expected)
    np.testing.assert_array_equal(ds.window(0, len(ds)), expected)
    assert ds.docs == len(docs) and ds.metadata == {"vocab_size": 65536, "tokenizer": "x"}

    # shards: full except the last, named in order, each one a memmap of the right slice
    shards = ds.index["shards"]
    assert len(shards) == -(-len(expected) // shard_tokens)
    assert [s["tokens"] for s in shards[:-1]] == [shard_tokens] * (len(shards) - 1)
    assert all(isinstance(a, np.memmap) for a in ds.arrays)
    for i, s in enumerate(shards):
        piece = expected[i * shard_tokens : i * shard_tokens + s["tokens"]]
        raw = np.fromfile(folder / "train" / s["file"], dtype="<u2")
        np.testing.assert_array_equal(raw, piece)
        assert s["docs"] == np.count_nonzero(piece == 0)


def test_writer_streams_full_shards_to_disk_before_close(tmp_path):
    w = ShardWriter(tmp_path, "train", shard_tokens=10)
    w.add(list(range(1, 26)))  # 26 tokens with the separator: two full shards and 6 tokens pending
    done = sorted(p.name for p in w.tmp_dir.iterdir())
    assert done == ["shard_000000.bin", "shard_000001.bin", "shard_000002.bin"]
    assert [(w.tmp_dir / n).stat().st_size for n in done[:2]] == [20, 20]
    assert not (tmp_path / "train").exists()  # nothing under the final name yet
    with pytest.raises(DataError, match="no 'train' split"):
        TokenDataset(tmp_path, "train")
    w.close()
    assert len(TokenDataset(tmp_path, "train")) == 26
    assert [p.name for p in tmp_path.iterdir()] == ["train"]


def test_exception_mid_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with ShardWriter(tmp_path, "train", shard_tokens=4) as w:
            w.add([1, 2, 3, 4, 5, 6, 7])
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DataError, match="does not fit"):
        with ShardWriter(tmp_path, "val", shard_tokens=4) as w:
            w.add([1, 2, 3])
            w.add([5, 65536])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "doc, message",
    [
        ([1, 65536], "does not fit"),
        ([-1, 5], "does not fit"),
        ([3, 0, 4], "reserved as the document separator"),
        ([1.0, 2.0], "must be integers"),
        ([], "non-empty"),
        ([[1, 2]], "1-D"),
    ],
)
def test_bad_documents_are_rejected(tmp_path, doc, message):
    w = ShardWriter(tmp_path, "train")
    with pytest.raises(DataError, match=message):
        w.add(doc)
    w.abort()
    assert list(tmp_path.iterdir()) == []


def test_writer_argument_errors(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match="already exists"):
        ShardWriter(tmp_path, "train")
    for split in ["", "a/b", ".hidden"]:
        with pytest.raises(DataError, match="split"):
            ShardWriter(tmp_path, split)
    with pytest.raises(DataError, match="shard_tokens"):
        ShardWriter(tmp_path, "val", shard_tokens=0)
    with pytest.raises(DataError, match="JSON"):
        ShardWriter(tmp_path, "val", metadata={"f": object()})
    assert [p.name for p in tmp_path.iterdir()] == ["train"]


def test_reader_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        TokenDataset(tmp_path / "nowhere", "train")
    ShardWriter(tmp_path, "empty").close()
    with pytest.raises(DataError, match="empty"):
        TokenDataset(tmp_path, "empty")
    ds = write_split(tmp_path, [[1, 2, 3]], shard_tokens=3)  # 4 tokens
    ds.sample_batch(2, 3)
    with pytest.raises(DataError, match="needs at least 5"):
        ds.sample_batch(2, 4)
    with pytest.raises(DataError, match="needs at least 5"):
        next(ds.iter_batches(2, 4))
    shard = tmp_path / "train" / "shard_000001.bin"
    shard.write_bytes(b"")
    with pytest.raises(DataError, match="wrong size"):
        TokenDataset(tmp_path, "train")
    (tmp_path / "train" / "index.json").write_text("{not json")
    with pytest.raises(DataError, match="not a valid index"):
        TokenDataset(tmp_path, "train")


# ---- random and ordered windows


def test_sample_batch_draws_contiguous_windows_from_every_start(tmp_path):
    docs = counting_docs([5, 1, 9, 3, 7, 2, 4])  # 38 tokens with separators
    ds = write_split(tmp_path, docs, shard_tokens=7)  # many windows cross shard boundaries
    stream, T = stream_of(docs), 8
    g = torch.Generator().manual_seed(0)
    starts = []
    for _ in range(100):
        batch = ds.sample_batch(16, T, g)
        x, y = batch.inputs, batch.targets
        assert batch.num_tokens == 16 * T
        assert x.shape == y.shape == (16, T) and x.dtype == y.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1])
        for row in torch.cat([x, y[:, -1:]], dim=1).numpy():
            s = window_start(stream, row)
            np.testing.assert_array_equal(row, stream[s : s + T + 1])
            starts.append(s)
    # uniform over exactly the valid starts 0 .. len - (T + 1)
    assert set(starts) == set(range(len(stream) - T))


def test_sample_batch_is_repeatable_with_a_seed(tmp_path):
    ds = write_split(tmp_path, counting_docs([50, 30, 70]), shard_tokens=64)
    a = ds.sample_batch(4, 16, torch.Generator().manual_seed(1))
    b = ds.sample_batch(4, 16, torch.Generator().manual_seed(1))
    c = ds.sample_batch(4, 16, torch.Generator().manual_seed(2))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.inputs, c.inputs)


@pytest.mark.parametrize("batch_size, ctx_len", [(1, 1), (3, 5), (4, 37), (10, 100)])
def test_iter_batches_covers_the_stream_in_order(tmp_path, batch_size, ctx_len):
    docs = counting_docs([40, 17, 60, 3, 24])
    ds = write_split(tmp_path, docs, shard_tokens=33)
    stream = stream_of(docs)
    n_windows = (len(stream) - 1) // ctx_len
    xs, ys = zip(*((b.inputs, b.targets) for b in ds.iter_batches(batch_size, ctx_len)))
    assert [len(x) for x in xs] == [min(batch_size, n_windows - i) for i in range(0, n_windows, batch_size)]
    x, y = torch.cat(xs).numpy(), torch.cat(ys).numpy()
    np.testing.assert_array_equal(x.reshape(-1), stream[: n_windows * ctx_len])
    np.testing.assert_array_equal(y.reshape(-1), stream[1 : n_windows * ctx_len + 1])


# ---- train / val split


def test_split_is_frozen():
    # a golden pattern: the same key must land in the same split in every process and release
    # (Python's salted hash() would change it on every run; a new hash would reshuffle datasets)
    got = "".join("1" if split_of(f"corpus/doc{i}.txt", 0.5) == "val" else "0" for i in range(64))
    assert got == "1101110110111000110111000100010011100111010100101010110010001101"


def test_split_fraction_and_bounds():
    keys = [f"doc-{i}" for i in range(20000)]
    n_val = sum(split_of(k, 0.1) == "val" for k in keys)
    assert abs(n_val - 2000) < 5 * (20000 * 0.1 * 0.9) ** 0.5
    assert {split_of(k, 0.0) for k in keys[:500]} == {"train"}
    assert {split_of(k, 1.0) for k in keys[:500]} == {"val"}
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(DataError, match="val_fraction"):
            split_of("a", bad)


@settings(max_examples=50)
@given(key=st.text(max_size=20), f1=st.floats(0, 1), f2=st.floats(0, 1))
def test_split_is_monotone_in_the_fraction(key, f1, f2):
    lo, hi = sorted((f1, f2))
    assert split_of(key, lo) != "val" or split_of(key, hi) == "val"


# ---- binidx


def write_binidx(prefix, docs, code, dtype):
    """Write a Megatron / RWKV-LM .bin + .idx pair following the format description."""
    sizes = np.array([len(d) for d in docs], dtype="<i4")
    itemsize = np.dtype(dtype).itemsize
    pointers = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype("<i8") * itemsize
    with open(f"{prefix}.bin", "wb") as f:
        for d in docs:
            f.write(np.asarray(d, dtype=np.dtype(dtype).newbyteorder("<")).tobytes())
    with open(f"{prefix}.idx", "wb") as f:
        f.write(b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<B", code))
        f.write(struct.pack("<Q", len(docs)) + struct.pack("<Q", len(docs) + 1))
        f.write(sizes.tobytes() + pointers.tobytes() + np.arange(len(docs) + 1, dtype="<i8").tobytes())


@pytest.mark.parametrize("code, dtype", [(8, np.uint16), (4, np.int32), (1, np.uint8)])
def test_read_binidx(tmp_path, code, dtype):
    # json2binidx ends every document with token 0, as our shards do
    docs = [[*range(1, 1 + n), 0] for n in (3, 10, 1, 25)]
    prefix = str(tmp_path / "corpus_text_document")
    write_binidx(prefix, docs, code, dtype)
    tokens = read_binidx(prefix)
    assert tokens.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(tokens, np.concatenate(docs))
    ds = BinidxDataset(prefix)
    batch = ds.sample_batch(8, 6, torch.Generator().manual_seed(0))
    x, y = batch.inputs, batch.targets
    stream = np.concatenate(docs).astype(np.int64)
    for row in torch.cat([x, y[:, -1:]], dim=1).numpy():
        assert any(np.array_equal(row, stream[s : s + 7]) for s in range(len(stream) - 6))


def test_read_binidx_errors(tmp_path):
    prefix = str(tmp_path / "d")
    with pytest.raises(DataError, match="not found"):
        read_binidx(prefix)
    write_binidx(prefix, [[1, 2, 0]], 8, np.uint16)
    good_idx = open(f"{prefix}.idx", "rb").read()

    def corrupt(idx=None, bin_bytes=None):
        open(f"{prefix}.idx", "wb").write(idx if idx is not None else good_idx)
        if bin_bytes is not None:
            open(f"{prefix}.bin", "wb").write(bin_bytes)

    corrupt(idx=b"NOTANIDX!" + good_idx[9:])
    with pytest.raises(DataError, match="bad magic"):
        read_binidx(prefix)
    corrupt(idx=good_idx[:9] + struct.pack("<Q", 2) + good_idx[17:])
    with pytest.raises(DataError, match="version"):
        read_binidx(prefix)
    corrupt(idx=good_idx[:17] + struct.pack("<B", 6) + good_idx[18:])
    with pytest.raises(DataError, match="dtype code 6"):
        read_binidx(prefix)
    corrupt(idx=good_idx[:-3])
    with pytest.raises(DataError, match="header implies"):
        read_binidx(prefix)
    corrupt(bin_bytes=b"\x01\x00\x02\x00")  # one token short
    with pytest.raises(DataError, match="sequences span"):
        read_binidx(prefix)

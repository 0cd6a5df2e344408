"""A World-tokenizer vocabulary trimmed to the tokens a corpus uses, for small models.

With 65,536 outputs the head is most of a tiny model's compute; the chatterbot demo corpus uses
about a tenth of the ids. The trimmed model has one output per kept id (`ids[i]` is the World id
of model id i). The 256 byte tokens are always kept, so any text can still be encoded: a World
token outside the subset is spelled with its bytes.
"""
import json
from pathlib import Path

import numpy as np
import torch

from eaglefinch.rwkv_core.data import Batch
from eaglefinch.rwkv_core.files import write_json_atomic


def used_ids(*streams) -> list[int]:
    """Sorted World ids of the streams (TokenDataset), plus 0 and the 256 byte tokens."""
    return ids_in(array for stream in streams for array in stream.arrays)


def ids_in(arrays) -> list[int]:
    """Sorted World ids in the id arrays (or lists), plus 0 and the 256 byte tokens: what a
    trimmed vocabulary keeps."""
    seen = np.zeros(65536, dtype=bool)
    seen[:257] = True
    for array in arrays:
        array = np.asarray(array)
        for start in range(0, len(array), 1 << 22):  # in pieces: a corpus may exceed RAM
            seen[np.unique(array[start:start + (1 << 22)])] = True
    return np.flatnonzero(seen).tolist()


class SubsetTokenizer:
    """Encode/decode between text and trimmed ids, on top of a WorldTokenizer."""

    def __init__(self, world, ids):
        self.world, self.ids = world, list(ids)
        self.to_subset = {w: i for i, w in enumerate(self.ids)}
        if any(b + 1 not in self.to_subset for b in range(256)) or self.to_subset.get(0) != 0:
            raise ValueError("a vocabulary subset must keep id 0 (as 0) and the 256 byte tokens")
        self.vocab_size = self.id_limit = len(self.ids)
        self.eot_id = 0

    def encode(self, text: str) -> list[int]:
        out = []
        for w in self.world.encode(text):
            if w in self.to_subset:
                out.append(self.to_subset[w])
            else:
                out.extend(self.to_subset[b + 1] for b in self.world.decode_bytes([w]))
        return out

    def decode_bytes(self, ids) -> bytes:
        return self.world.decode_bytes([self.ids[i] for i in ids])

    def decode(self, ids, errors="replace") -> str:
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    def save(self, path) -> None:
        write_json_atomic(path, {"world_ids": self.ids})

    @classmethod
    def load(cls, world, path) -> "SubsetTokenizer":
        try:
            return cls(world, json.loads(Path(path).read_text())["world_ids"])
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise ValueError(f"{path}: not a vocabulary subset file ({e})") from None


class MappedTokens:
    """A token stream (TokenDataset) seen through a World id -> subset id table."""

    def __init__(self, stream, ids):
        self.stream = stream
        self.table = torch.zeros(65536, dtype=torch.long)
        self.table[torch.tensor(ids)] = torch.arange(len(ids))

    def _map(self, batch: Batch) -> Batch:
        return Batch(self.table[batch.inputs], self.table[batch.targets])

    def sample_indices(self, batch_size, ctx_len, generator=None):
        return self.stream.sample_indices(batch_size, ctx_len, generator)

    def batch_at(self, starts, ctx_len):
        return self._map(self.stream.batch_at(starts, ctx_len))

    def sample_batch(self, batch_size, ctx_len, generator=None):
        return self._map(self.stream.sample_batch(batch_size, ctx_len, generator))

    def iter_indices(self, batch_size, ctx_len):
        return self.stream.iter_indices(batch_size, ctx_len)

    def iter_batches(self, batch_size, ctx_len):
        for batch in self.stream.iter_batches(batch_size, ctx_len):
            yield self._map(batch)

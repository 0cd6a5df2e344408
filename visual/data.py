"""Visual training data on disk: JSONL records, one per line, in either of two formats.

LLaVA conversation (the human turn holding the image has one "<image>" placeholder):
    {"image": "imgs/0001.png", "conversations": [{"from": "human", "value": "<image>\\nWhat is it?"},
                                                 {"from": "gpt", "value": "A cat."}, ...]}
    Without "image", the record is text-only and may not contain "<image>".
Image-caption pair (becomes one turn: `caption_prompt`, answered by the caption):
    {"image": "imgs/0001.png", "caption": "a cat on a mat"}

A JSON array of such records (LLaVA ships its data as .json) is read too. Relative image paths
are resolved against `image_root`, by default the JSONL file's folder. Every malformed record
raises one `DataError` naming the file and line (or record index) and what is wrong.
"""
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch.utils.data import Dataset

from eaglefinch.rwkv_core.files import atomic_path
from eaglefinch.rwkv_core.data import DataError
from eaglefinch.visual.images import DEFAULT_MAX_PIXELS, load_image
from eaglefinch.visual.prompt import IMAGE_PLACEHOLDER, TokenLayout, VisualBatch, collate, encode_conversation

DEFAULT_CAPTION_PROMPT = "<image>\nDescribe the image."
ROLES = ("human", "gpt")


@dataclass(frozen=True)
class VisualRecord:
    """One sample: an image path (None for text-only) and its (human, answer) turns."""

    image: Optional[Path]
    turns: tuple[tuple[str, str], ...]


def read_records(path, image_root=None, caption_prompt: str = DEFAULT_CAPTION_PROMPT) -> list[VisualRecord]:
    """Read every record of a JSONL (or JSON array) file; see the module docstring for formats."""
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read as UTF-8 text: {e}") from None
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None
        located = [(f"{path} record {i}", item) for i, item in enumerate(items)]
    else:
        located = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                located.append((f"{path}:{lineno}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: invalid JSON: {e.msg}") from None
    records = [parse_record(item, where, root, caption_prompt) for where, item in located]
    if not records:
        raise DataError(f"{path}: no records")
    return records


def parse_record(item, where: str, root: Path, caption_prompt: str = DEFAULT_CAPTION_PROMPT) -> VisualRecord:
    """Validate one decoded record; `where` (e.g. "data.jsonl:12") prefixes every error."""
    if not isinstance(item, dict):
        raise DataError(f"{where}: a record must be a JSON object, got {type(item).__name__}")
    image = item.get("image")
    if image is not None and (not isinstance(image, str) or not image.strip()):
        raise DataError(f"{where}: 'image' must be a non-empty string path")
    if "conversations" in item:
        turns = _parse_conversation(item["conversations"], where)
    elif "caption" in item:
        caption = item["caption"]
        if not isinstance(caption, str) or not caption.strip():
            raise DataError(f"{where}: 'caption' must be a non-empty string")
        if image is None:
            raise DataError(f"{where}: a caption record needs an 'image'")
        turns = ((caption_prompt, caption),)
    else:
        raise DataError(f"{where}: expected a 'conversations' list or a 'caption', found keys {sorted(item)}")
    n_placeholders = sum(human.count(IMAGE_PLACEHOLDER) for human, _ in turns)
    if any(IMAGE_PLACEHOLDER in answer for _, answer in turns):
        raise DataError(f"{where}: {IMAGE_PLACEHOLDER} may only appear in a human turn")
    if image is not None and n_placeholders != 1:
        raise DataError(f"{where}: a record with an image needs exactly one {IMAGE_PLACEHOLDER}, found {n_placeholders}")
    if image is None and n_placeholders:
        raise DataError(f"{where}: {IMAGE_PLACEHOLDER} appears but the record has no 'image'")
    return VisualRecord(root / image if image is not None else None, turns)


def _parse_conversation(conversation, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(conversation, list) or not conversation:
        raise DataError(f"{where}: 'conversations' must be a non-empty list")
    if len(conversation) % 2:
        raise DataError(f"{where}: 'conversations' must alternate human and gpt turns, got an odd number ({len(conversation)})")
    values = []
    for k, turn in enumerate(conversation):
        expected = ROLES[k % 2]
        if not isinstance(turn, dict) or turn.get("from") != expected:
            got = turn.get("from") if isinstance(turn, dict) else type(turn).__name__
            raise DataError(f"{where}: turn {k} must be from {expected!r}, got {got!r}")
        if not isinstance(turn.get("value"), str):
            raise DataError(f"{where}: turn {k} has no string 'value'")
        values.append(turn["value"])
    return tuple(zip(values[0::2], values[1::2]))


def write_jsonl(path, records: Sequence[dict]) -> None:
    """Write records as UTF-8 JSONL; the file appears complete or not at all.

    A file name that is not UTF-8 reaches us with lone surrogates ("\\udcff" for the byte 0xff);
    they are written as the JSON escape \\udcff, so `read_records` gives the very name back.
    """
    with atomic_path(path) as tmp:
        # a lone surrogate can only sit inside a JSON string, where what backslashreplace writes (\udcff) is its escape
        with open(tmp, "w", encoding="utf-8", errors="backslashreplace") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")


class VisualDataset(Dataset):
    """Records -> (image [3, H, W] or None, TokenLayout), ready for `collate_visual`.

    preprocess: the encoder's eval transform (PIL image -> [3, H, W] float tensor)
    encode:     the language model's tokenizer, str -> list of ids
    A missing or broken image, or one of more than `max_pixels` pixels, raises `ImageError` naming the file.
    """

    def __init__(
        self,
        records: Sequence[VisualRecord],
        preprocess: Callable,
        encode: Callable[[str], list[int]],
        n_image_tokens: int,
        image_position: str = "inline",
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ):
        self.records = list(records)
        self.preprocess = preprocess
        self.encode = encode
        self.n_image_tokens = n_image_tokens
        self.image_position = image_position
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[Optional[torch.Tensor], TokenLayout]:
        record = self.records[i]
        image = self.preprocess(load_image(record.image, self.max_pixels)) if record.image is not None else None
        layout = encode_conversation(record.turns, self.encode, self.n_image_tokens, self.image_position)
        return image, layout


def collate_visual(samples: Sequence[tuple[Optional[torch.Tensor], TokenLayout]], pad_id: int = 0) -> VisualBatch:
    """One VisualBatch of (image or None, layout) samples; its pixels are None if no sample has an image.

    A text-only sample gets a zero image; its empty span means its image tokens are never used.
    """
    images = [image for image, _ in samples]
    batch = collate([layout for _, layout in samples], pad_id)
    present = [image for image in images if image is not None]
    if not present:
        return batch
    zeros = torch.zeros_like(present[0])
    return dataclasses.replace(batch, pixels=torch.stack([zeros if image is None else image for image in images]))

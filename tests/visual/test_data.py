import json

import numpy as np
import pytest
import torch
from PIL import Image

from eaglefinch.rwkv_core.data import DataError
from eaglefinch.visual.data import DEFAULT_CAPTION_PROMPT, VisualDataset, collate_visual, read_records, write_jsonl
from eaglefinch.visual.images import ImageError


def conversation(*values, image="a.png"):
    turns = [{"from": "human" if k % 2 == 0 else "gpt", "value": v} for k, v in enumerate(values)]
    return {"image": image, "conversations": turns} if image else {"conversations": turns}


def write_lines(path, lines):
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def test_reads_both_formats_and_resolves_image_paths(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [
        conversation("<image>\nWhat?", "A cat.", "Colour?", "Grey."),
        "",
        {"image": "/abs/b.png", "caption": "a dog"},
        conversation("Hello", "Hi", image=None),
    ])
    first, second, third = read_records(path)
    assert first.image == tmp_path / "a.png"
    assert first.turns == (("<image>\nWhat?", "A cat."), ("Colour?", "Grey."))
    assert second.image.as_posix() == "/abs/b.png" and second.turns == ((DEFAULT_CAPTION_PROMPT, "a dog"),)
    assert third.image is None
    assert read_records(path, image_root=tmp_path / "imgs")[0].image == tmp_path / "imgs" / "a.png"


def test_reads_a_json_array_like_llava_ships(tmp_path):
    path = tmp_path / "llava.json"
    path.write_text(json.dumps([conversation("<image>\nQ", "A"), {"image": "c.png", "caption": "x"}]))
    assert [r.image.name for r in read_records(path)] == ["a.png", "c.png"]
    path.write_text(json.dumps([conversation("<image>\nQ", "A"), {"caption": "x"}]))
    with pytest.raises(DataError, match=r"llava.json record 1: a caption record needs an 'image'"):
        read_records(path)


@pytest.mark.parametrize(
    "bad, message",
    [
        ("{not json", "invalid JSON"),
        ([1, 2], "must be a JSON object"),
        ({"image": "a.png"}, "expected a 'conversations' list or a 'caption'"),
        ({"image": "a.png", "caption": "  "}, "'caption' must be a non-empty string"),
        ({"image": 3, "caption": "x"}, "'image' must be a non-empty string"),
        (conversation("<image>\nQ", "A", "B"), "odd number"),
        ({"image": "a.png", "conversations": [{"from": "gpt", "value": "x"}, {"from": "human", "value": "y"}]},
         "turn 0 must be from 'human', got 'gpt'"),
        ({"image": "a.png", "conversations": [{"from": "human", "value": 1}, {"from": "gpt", "value": "y"}]},
         "turn 0 has no string 'value'"),
        (conversation("Q", "A"), "exactly one <image>, found 0"),
        (conversation("<image> <image>", "A"), "exactly one <image>, found 2"),
        (conversation("<image>", "<image>"), "only appear in a human turn"),
        (conversation("<image>", "A", image=None), "has no 'image'"),
        ({"image": "a.png", "conversations": []}, "non-empty list"),
    ],
)
def test_malformed_records_name_file_and_line(tmp_path, bad, message):
    path = write_lines(tmp_path / "bad.jsonl", [conversation("<image>\nQ", "A"), "", bad])
    with pytest.raises(DataError, match=message) as error:
        read_records(path)
    assert str(error.value).startswith(f"{path}:3: ")


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_records(tmp_path / "none.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="no records"):
        read_records(tmp_path / "empty.jsonl")
    (tmp_path / "latin.jsonl").write_bytes(b'{"caption": "caf\xe9"}\n')
    with pytest.raises(DataError, match="UTF-8"):
        read_records(tmp_path / "latin.jsonl")


def test_write_jsonl_round_trips_and_leaves_no_partial_file(tmp_path):
    records = [{"image": "é.png", "caption": "naïve"}, {"image": "b.png", "caption": "x"}]
    write_jsonl(tmp_path / "out.jsonl", records)
    assert [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()] == records
    with pytest.raises(TypeError):
        write_jsonl(tmp_path / "broken.jsonl", [{"ok": 1}, {"bad": object()}])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def test_dataset_and_collate(tmp_path):
    Image.new("RGB", (5, 5), "red").save(tmp_path / "a.png")
    write_lines(tmp_path / "d.jsonl", [
        conversation("<image>\nQ", "yes"),
        conversation("Hi", "there", image=None),
        {"image": "missing.png", "caption": "x"},
    ])
    records = read_records(tmp_path / "d.jsonl")
    preprocess = lambda image: torch.tensor(np.asarray(image), dtype=torch.float32).permute(2, 0, 1)  # noqa: E731
    dataset = VisualDataset(records, preprocess, lambda s: [ord(c) for c in s], n_image_tokens=3)
    batch = collate_visual([dataset[0], dataset[1]])
    images = batch.pixels
    assert images.shape == (2, 3, 5, 5)
    assert torch.equal(images[0, 0], torch.full((5, 5), 255.0)) and torch.equal(images[1], torch.zeros(3, 5, 5))
    assert batch.image_spans == [(len("User: "), len("User: ") + 3), (0, 0)]
    assert batch.inputs.shape[0] == 2 and batch.loss_mask.sum() == len(" yes\n\n") + len(" there\n\n")
    assert collate_visual([dataset[1]]).pixels is None
    with pytest.raises(ImageError, match="missing.png: no such file"):
        dataset[2]

import hashlib
import random
from collections import deque

import numpy as np
import pytest

from eaglefinch.visual import shapes
from eaglefinch.visual.data import read_records


def components(image):
    """Connected blobs of non-white pixels (4-neighbourhood): a list of (ys, xs) arrays."""
    ink = (np.asarray(image).astype(int).sum(axis=2) < 3 * 250)
    seen = np.zeros_like(ink)
    blobs = []
    for y0, x0 in zip(*np.nonzero(ink)):
        if seen[y0, x0]:
            continue
        queue, pixels = deque([(y0, x0)]), []
        seen[y0, x0] = True
        while queue:
            y, x = queue.popleft()
            pixels.append((y, x))
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < ink.shape[0] and 0 <= nx < ink.shape[1] and ink[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        blobs.append(np.array(pixels).T)
    return blobs


def read_caption_from_pixels(image, size):
    """Recover the caption from the pixels alone, independently of the generator's bookkeeping."""
    pixels = np.asarray(image).astype(int)
    blobs = components(image)
    count = len(blobs)
    ys = np.concatenate([b[0] for b in blobs])
    xs = np.concatenate([b[1] for b in blobs])
    cell = size // 3
    cell_of = (int(ys.mean()) // cell, int(xs.mean()) // cell)
    place = next(name for name, (rc, _) in shapes.PLACES.items() if rc == cell_of)
    mean_rgb = pixels[ys, xs].mean(axis=0)
    colour = min(shapes.COLOURS, key=lambda c: np.abs(np.array(shapes.COLOURS[c]) - mean_rgb).sum())
    # fill ratio of the blob's bounding box: square ~1, circle ~pi/4, triangle ~1/2
    y, x = blobs[0]
    fill = len(y) / ((y.max() - y.min() + 1) * (x.max() - x.min() + 1))
    shape = "square" if fill > 0.9 else "circle" if fill > 0.65 else "triangle"
    noun = shape if count == 1 else shape + "s"
    return f"{shapes.COUNT_WORDS[count]} {colour} {noun} {shapes.PLACES[place][1]}"


@pytest.mark.parametrize("size", [64, 96])
def test_captions_describe_the_pixels_exactly(size):
    train, held = shapes.make_splits(180, 40, seed=3, size=size)
    for scene in train + held:
        image = shapes.render(scene)
        assert image.size == (size, size) and image.mode == "RGB"
        assert read_caption_from_pixels(image, size) == shapes.caption(scene)


def test_splits_are_deterministic_balanced_and_disjoint():
    train, held = shapes.make_splits(360, 200, seed=7)
    again, _ = shapes.make_splits(360, 200, seed=7)
    other, _ = shapes.make_splits(360, 200, seed=8)
    digest = lambda s: hashlib.sha1(shapes.render(s).tobytes()).hexdigest()  # noqa: E731
    assert [digest(s) for s in train] == [digest(s) for s in again]
    assert [digest(s) for s in train] != [digest(s) for s in other]
    train_images = {digest(s) for s in train}
    assert len(train_images) == len(train)
    assert not train_images & {digest(s) for s in held}
    counts = {}
    for scene in train:
        counts[shapes.caption(scene)] = counts.get(shapes.caption(scene), 0) + 1
    assert set(counts) == set(shapes.all_captions()) and set(counts.values()) == {2}


def test_grammar():
    captions = shapes.all_captions()
    assert len(captions) == len(set(captions)) == 180
    scene = shapes.sample_scene(random.Random(0), "triangle", "yellow", "bottom", 1)
    assert shapes.caption(scene) == "one yellow triangle at the bottom"
    scene = shapes.sample_scene(random.Random(0), "circle", "red", "top", 2)
    assert shapes.caption(scene) == "two red circles at the top"
    assert shapes.questions(scene)[:4] == [
        ("What colour are the shapes?", "red"),
        ("What shape are they?", "circle"),
        ("How many shapes are there?", "two"),
        ("Where are the shapes?", "at the top"),
    ]
    with pytest.raises(ValueError, match="at least 64"):
        shapes.sample_scene(random.Random(0), "circle", "red", "top", 3, size=32)


def test_written_dataset_reads_back_in_both_formats(tmp_path):
    counts = shapes.write_shapes_dataset(tmp_path, n_train=6, n_heldout=3, seed=1)
    assert counts == {"train": 6, "heldout": 3}
    captions = read_records(tmp_path / "heldout.jsonl")
    qa = read_records(tmp_path / "heldout_qa.jsonl")
    _, held = shapes.make_splits(6, 3, seed=1)
    for record, conversation, scene in zip(captions, qa, held):
        assert record.image == conversation.image and record.image.is_file()
        assert record.turns[0][1] == shapes.caption(scene)
        assert [answer for _, answer in conversation.turns] == [a for _, a in shapes.questions(scene)]
        assert conversation.turns[0][0].startswith("<image>\n")

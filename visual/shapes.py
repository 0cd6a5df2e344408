"""Procedural image-caption data: flat shapes on white, with exact captions from a tiny grammar.

A scene is one kind of shape in one colour, repeated 1-3 times inside one of five regions of a
3x3 grid (top, left, centre, right, bottom: the plus-shaped cells, so no two regions touch a
corner and every caption is unambiguous). Its caption is

    "<count> <colour> <shape>[s] <where>"      e.g. "two red circles at the top"

so there are 3 counts x 4 colours x 3 shapes x 5 places = 180 captions, few enough for a tiny
model to learn on a CPU in minutes. Each scene also answers short questions ("What colour are the
shapes?" -> "red") for the LLaVA conversation format.

Everything is deterministic in the seed. `make_splits` deals out every caption evenly (scene i
gets caption i mod 180 of a shuffled list), and draws train and held-out scenes from one stream
in which no placement repeats, so no held-out image is also a training image.
"""
import itertools
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from eaglefinch.visual.data import write_jsonl

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 40, 40), "green": (40, 160, 60), "blue": (40, 70, 220), "yellow": (230, 190, 20)}
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
# region name -> (row, column) of its cell in the 3x3 grid, and the phrase used in captions
PLACES = {
    "top": ((0, 1), "at the top"),
    "left": ((1, 0), "on the left"),
    "centre": ((1, 1), "in the centre"),
    "right": ((1, 2), "on the right"),
    "bottom": ((2, 1), "at the bottom"),
}
COLOUR_JITTER = 25  # per channel, so colour names cover a range of shades, not one exact RGB
ALL_ATTRIBUTES = tuple(itertools.product(SHAPES, COLOURS, PLACES, COUNT_WORDS))  # 180 combinations
MIN_SIZE = 64  # image side in pixels: from here up, three shapes fit in a grid cell


@dataclass(frozen=True)
class Scene:
    """One image's content. `boxes` are (x, y, side) in pixels of a `size` x `size` image."""

    shape: str
    colour: str
    place: str
    count: int
    rgb: tuple[int, int, int]
    boxes: tuple[tuple[int, int, int], ...]
    size: int


def caption(scene: Scene) -> str:
    """The exact caption, e.g. "one blue square on the left"."""
    noun = scene.shape if scene.count == 1 else scene.shape + "s"
    return f"{COUNT_WORDS[scene.count]} {scene.colour} {noun} {PLACES[scene.place][1]}"


def all_captions() -> list[str]:
    """The 180 possible captions, in a fixed order."""
    return [f"{COUNT_WORDS[n]} {c} {s if n == 1 else s + 's'} {PLACES[p][1]}" for s, c, p, n in ALL_ATTRIBUTES]


def questions(scene: Scene) -> list[tuple[str, str]]:
    """(question, answer) pairs about the scene; the last one asks for the full caption."""
    one = scene.count == 1
    return [
        ("What colour is the shape?" if one else "What colour are the shapes?", scene.colour),
        ("What shape is it?" if one else "What shape are they?", scene.shape),
        ("How many shapes are there?", COUNT_WORDS[scene.count]),
        ("Where is the shape?" if one else "Where are the shapes?", PLACES[scene.place][1]),
        ("Describe the image.", caption(scene)),
    ]


def sample_scene(rng: random.Random, shape: str, colour: str, place: str, count: int, size: int = 64) -> Scene:
    """Place `count` non-overlapping shapes at random inside the region's grid cell."""
    if size < MIN_SIZE:
        raise ValueError(f"image size must be at least {MIN_SIZE} pixels so three shapes fit in a cell, got {size}")
    (row, col), _ = PLACES[place]
    cell = size // 3
    x0, y0 = col * cell, row * cell
    rgb = tuple(min(255, max(0, v + rng.randint(-COLOUR_JITTER, COLOUR_JITTER))) for v in COLOURS[colour])
    lo, hi = round(size * 0.11), round(size * 0.14)
    # rejection sampling: from 64 px up, two of the largest shapes fit side by side in a cell
    while True:
        boxes = []
        for _ in range(count):
            side = rng.randint(lo, hi)
            x = rng.randint(x0 + 1, x0 + cell - side - 1)
            y = rng.randint(y0 + 1, y0 + cell - side - 1)
            boxes.append((x, y, side))
        if not any(_overlap(a, b) for a, b in itertools.combinations(boxes, 2)):
            return Scene(shape, colour, place, count, rgb, tuple(sorted(boxes)), size)


def _overlap(a, b, gap: int = 1) -> bool:
    (ax, ay, aside), (bx, by, bside) = a, b
    return ax < bx + bside + gap and bx < ax + aside + gap and ay < by + bside + gap and by < ay + aside + gap


def render(scene: Scene) -> Image.Image:
    """Draw the scene as an RGB image of scene.size x scene.size on white."""
    image = Image.new("RGB", (scene.size, scene.size), "white")
    draw = ImageDraw.Draw(image)
    for x, y, side in scene.boxes:
        x1, y1 = x + side - 1, y + side - 1
        if scene.shape == "circle":
            draw.ellipse((x, y, x1, y1), fill=scene.rgb)
        elif scene.shape == "square":
            draw.rectangle((x, y, x1, y1), fill=scene.rgb)
        else:  # triangle pointing up
            draw.polygon([(x + side / 2, y), (x, y1), (x1, y1)], fill=scene.rgb)
    return image


def make_splits(n_train: int, n_heldout: int, seed: int = 0, size: int = 64) -> tuple[list[Scene], list[Scene]]:
    """Deterministic train and held-out scenes with every caption dealt out evenly and no repeats.

    Both lists come from one random stream; a scene whose placement (attributes and boxes) was
    already drawn is drawn again, so no image appears twice, within or across the splits.
    """
    if n_train < 0 or n_heldout < 0:
        raise ValueError(f"split sizes must be >= 0, got {n_train} and {n_heldout}")
    rng = random.Random(seed)
    seen = set()
    splits = []
    for n in (n_train, n_heldout):
        order = list(ALL_ATTRIBUTES)
        rng.shuffle(order)
        scenes = []
        while len(scenes) < n:
            scene = sample_scene(rng, *order[len(scenes) % len(order)], size=size)
            key = (scene.shape, scene.colour, scene.boxes)
            if key not in seen:
                seen.add(key)
                scenes.append(scene)
        splits.append(scenes)
    return splits[0], splits[1]


def write_shapes_dataset(out_dir, n_train: int = 2000, n_heldout: int = 200, seed: int = 0, size: int = 64) -> dict:
    """Write the procedural dataset as PNGs plus JSONL in both formats that `visual.data` reads.

    Layout (image paths in the JSONL are relative to out_dir):
        out_dir/images/<split>_<i>.png
        out_dir/<split>.jsonl        {"image": ..., "caption": ...}
        out_dir/<split>_qa.jsonl     {"image": ..., "conversations": [human, gpt, human, gpt, ...]}
    for split in ("train", "heldout"). Returns {split: number of images}.
    """
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, scenes in zip(("train", "heldout"), make_splits(n_train, n_heldout, seed, size)):
        captions, conversations = [], []
        for i, scene in enumerate(scenes):
            rel = f"images/{split}_{i:05d}.png"
            render(scene).save(out_dir / rel)
            captions.append({"image": rel, "caption": caption(scene)})
            turns = []
            for k, (question, answer) in enumerate(questions(scene)):
                turns.append({"from": "human", "value": ("<image>\n" if k == 0 else "") + question})
                turns.append({"from": "gpt", "value": answer})
            conversations.append({"image": rel, "conversations": turns})
        # the JSONL is written last and atomically, so it never names a missing image
        write_jsonl(out_dir / f"{split}.jsonl", captions)
        write_jsonl(out_dir / f"{split}_qa.jsonl", conversations)
        counts[split] = len(scenes)
    return counts

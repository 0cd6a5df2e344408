"""Caption evaluation: exact-match accuracy on image-caption records, and a grid of predictions."""
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from eaglefinch.rwkv_core.files import atomic_path
from eaglefinch.visual.caption import answer
from eaglefinch.visual.data import VisualRecord
from eaglefinch.visual.images import DEFAULT_MAX_PIXELS, ImageError, load_image, read_or_error


@dataclass(frozen=True)
class CaptionResult:
    image: Path
    expected: str
    predicted: str

    @property
    def exact(self) -> bool:
        return normalise(self.predicted) == normalise(self.expected)


def normalise(text: str) -> str:
    """Case, surrounding space and a final full stop do not count as differences."""
    return " ".join(text.lower().strip().rstrip(".").split())


def evaluate_captions(vlm, tokenizer, records: Sequence[VisualRecord], batch_size: int = 32,
                      progress: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS):
    """Caption each record's image with its own (first-turn) question; compare with its answer.

    Unreadable images (or ones of more than `max_pixels` pixels) are skipped, as `caption_files`
    does. Returns (results, errors): results [CaptionResult] in record order, errors [(path, ImageError)].
    """
    from tqdm import tqdm

    results, errors = [], []
    bar = tqdm(total=len(records), disable=not progress, unit="image", desc="captioning")
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        readable = {}  # index in the chunk -> RGB image
        for k, record in enumerate(chunk):
            if record.image is None:
                raise ValueError(f"record {start + k} has no image to caption")
            image = read_or_error(record.image, max_pixels)
            if isinstance(image, ImageError):
                errors.append((record.image, image))
            else:
                readable[k] = image
        by_prompt = {}  # one batched prefill per distinct question
        for k in readable:
            by_prompt.setdefault(chunk[k].turns[0][0], []).append(k)
        predicted = {}
        for prompt, members in by_prompt.items():
            for k, text in zip(members, answer(vlm, tokenizer, [readable[k] for k in members], prompt)):
                predicted[k] = text
        results += [CaptionResult(chunk[k].image, chunk[k].turns[0][1], predicted[k]) for k in sorted(predicted)]
        bar.update(len(chunk))
    bar.close()
    return results, errors


def accuracy(results: Sequence[CaptionResult]) -> float:
    return sum(r.exact for r in results) / max(len(results), 1)


def save_grid(results: Sequence[CaptionResult], path, columns: int = 4, title: str = "",
              max_pixels: int = DEFAULT_MAX_PIXELS) -> Path:
    """A PNG grid of images with their predicted captions: green when exact, red (with the
    expected caption) when not."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not results:
        raise ValueError("no results to draw")
    rows = math.ceil(len(results) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, r in zip(axes.flat, results):
        ax.imshow(load_image(r.image, max_pixels))
        label = r.predicted if r.exact else f"{r.predicted}\n(expected: {r.expected})"
        ax.set_title(label, fontsize=8, color="green" if r.exact else "red", wrap=True)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 0.97) if title else None)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    return Path(path)


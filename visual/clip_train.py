"""Train a small CLIP with open_clip's own model and loss on local image-caption pairs.

No pretrained CLIP weights can be downloaded here, so this is how the pipeline gets a vision
tower that knows something: train a tiny open_clip model contrastively (`open_clip.ClipLoss`) on
local pairs (the procedural shapes, or openclipart titles), save its state dict, and load it with
`VisionEncoder(model_name, pretrained=PATH)`.

The saved file is {"state_dict": ..., "model_name": ..., "steps": ...}; open_clip reads the
"state_dict" entry, so the file also works with `open_clip.create_model(name, pretrained=PATH)`.
"""
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence, Union

import open_clip
import torch
from PIL import Image

from eaglefinch.rwkv_core.files import atomic_path
from eaglefinch.rwkv_core.train import TrainConfig, lr_at
from eaglefinch.visual.encoder import DEFAULT_MODEL, quiet_logging, register_model_configs
from eaglefinch.visual.images import DEFAULT_MAX_PIXELS, load_image, to_rgb

ImageSource = Union[str, Path, Image.Image]


@dataclass
class ClipRun:
    """A trained CLIP with what it needs at inference, and its training log."""

    model_name: str
    model: open_clip.CLIP
    tokenizer: Callable
    preprocess: Callable  # eval transform, PIL RGB -> [3, H, W]
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    max_pixels: int = DEFAULT_MAX_PIXELS  # the images' size limit (a decompression-bomb guard)


def _rgb(source: ImageSource, max_pixels: int) -> Image.Image:
    return to_rgb(source) if isinstance(source, Image.Image) else load_image(source, max_pixels)


def _distinct_caption_batches(captions: Sequence[str], batch_size: int, rng: random.Random):
    """Endless batches of indices, reshuffled every pass, with no caption twice in a batch.

    ClipLoss treats every other pair in the batch as a mismatch, so two images with the same
    caption would be pushed apart; a pair that would repeat a caption waits for the next pass.
    """
    if len(set(captions)) < batch_size:
        raise ValueError(f"batch_size {batch_size} needs at least as many distinct captions, found {len(set(captions))}")
    while True:
        order = list(range(len(captions)))
        rng.shuffle(order)
        batch, seen = [], set()
        for i in order:
            if captions[i] in seen:
                continue
            batch.append(i)
            seen.add(captions[i])
            if len(batch) == batch_size:
                yield batch
                batch, seen = [], set()


def train_clip(
    pairs: Sequence[tuple[ImageSource, str]],
    steps: int,
    model_name: str = DEFAULT_MODEL,
    batch_size: int = 64,
    lr: float = 1e-3,
    text_lr_scale: float = 0.1,
    weight_decay: float = 0.1,
    seed: int = 0,
    log_every: int = 0,
    log: Callable[[str], None] = print,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> ClipRun:
    """Train a randomly initialised open_clip `model_name` on (image, caption) pairs for `steps` steps.

    Images are file paths (read with `load_image`) or PIL images, and go through open_clip's
    training transform each step. The learning rate follows the shared trainer's schedule (warmup
    over the first tenth, cosine down to lr / 10). Weight decay applies to matrices only, not to
    biases, norm gains or the logit scale (as in open_clip's trainer).

    Everything outside the image tower learns at text_lr_scale x lr. On images that are mostly
    background (the shapes, clip-art) the image features hardly differ at initialisation; at the
    full rate the text tower then collapses to one constant vector, the loss sticks at ln(batch)
    and neither tower gets a gradient again. Measured on 8 shape pairs, 60 steps: final loss 2.08
    (= ln 8, stuck) at scale 1, 0.53 at scale 0.1.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    register_model_configs()
    torch.manual_seed(seed)
    with quiet_logging():  # open_clip warns that no pretrained weights were loaded: that is the point here
        model, preprocess_train, preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=None, output_dict=True
        )
    tokenizer = open_clip.get_tokenizer(model_name)
    loss_fn = open_clip.ClipLoss()
    image_ids = {id(p) for p in model.visual.parameters()}
    groups = []
    for in_image_tower, lr_scale in ((True, 1.0), (False, text_lr_scale)):
        params = [p for p in model.parameters() if (id(p) in image_ids) == in_image_tower]
        groups.append({"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay, "lr_scale": lr_scale})
        groups.append({"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0, "lr_scale": lr_scale})
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6)
    captions = [caption for _, caption in pairs]
    batches = _distinct_caption_batches(captions, batch_size, random.Random(seed))
    schedule = TrainConfig(max_steps=steps, lr_init=lr, lr_final=lr / 10, warmup_steps=max(1, steps // 10))
    run = ClipRun(model_name, model, tokenizer, preprocess, max_pixels=max_pixels)
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, schedule) * group["lr_scale"]
        batch = next(batches)
        images = torch.stack([preprocess_train(_rgb(pairs[i][0], max_pixels)) for i in batch])  # [B, 3, H, W]
        texts = tokenizer([captions[i] for i in batch])  # [B, context_length]
        out = model(images, texts)
        loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # CLIP caps the temperature at 100
            model.logit_scale.clamp_(0, math.log(100))
        run.losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            log(f"clip step {step + 1}/{steps}  loss {loss.item():.3f}  {time.perf_counter() - start:.0f}s")
    run.seconds = time.perf_counter() - start
    model.eval()
    return run


def save_clip(run: ClipRun, path) -> None:
    """Write the whole CLIP state dict so `VisionEncoder(run.model_name, pretrained=path)` loads it."""
    with atomic_path(path) as tmp:
        torch.save({"state_dict": run.model.state_dict(), "model_name": run.model_name, "steps": len(run.losses)}, tmp)


@torch.no_grad()
def retrieval_accuracy(run: ClipRun, pairs: Sequence[tuple[ImageSource, str]], candidates: Sequence[str]) -> float:
    """Fraction of images whose most similar candidate caption is their own caption."""
    text = run.model.encode_text(run.tokenizer(list(candidates)), normalize=True)  # [K, D]
    index = {c: k for k, c in enumerate(candidates)}
    correct = 0
    for i in range(0, len(pairs), 256):
        chunk = pairs[i:i + 256]
        images = torch.stack([run.preprocess(_rgb(source, run.max_pixels)) for source, _ in chunk])
        best = (run.model.encode_image(images, normalize=True) @ text.T).argmax(dim=1)
        correct += sum(int(b) == index[caption] for b, (_, caption) in zip(best.tolist(), chunk))
    return correct / len(pairs)

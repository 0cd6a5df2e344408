"""Visual training on the shared trainer: stage 1 (projector) and stage 2 (projector + backbone).

A run config has three sections: "model" (the RWKV, used when not starting from `init`), "train"
(TrainConfig; ctx_len caps the sample length) and "visual" (VisualConfig). The run folder gets
the trainer's files (model.safetensors, checkpoint.pt, metrics.jsonl, loss.png) plus config.json,
visual.json (model.safetensors also holds the projector and encoder), and vocab_subset.json with a trimmed
vocabulary.
"""
import dataclasses
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import torch

from eaglefinch.rwkv_core import RWKV, RunConfig
from eaglefinch.rwkv_core.data import DataError
from eaglefinch.rwkv_core.loss import L2Wrap
from eaglefinch.rwkv_core.run import Run
from eaglefinch.rwkv_core.train import Task, is_main_process, train
from eaglefinch.text.run import TextRun, save_vocabulary
from eaglefinch.text.subset import SubsetTokenizer, ids_in
from eaglefinch.text.tokenizer import WorldTokenizer
from eaglefinch.visual.data import VisualDataset, VisualRecord, collate_visual, read_records
from eaglefinch.visual.encoder import VisionEncoder
from eaglefinch.visual.images import DEFAULT_MAX_PIXELS, image_error, warn_skipped
from eaglefinch.visual.model import VisualConfig, VisualRWKV
from eaglefinch.visual.prompt import VisualBatch, encode_conversation, per_sample_loss
from eaglefinch.visual.run import VisualRun

CHECK_CHUNK = 4096  # images decoded per round of the up-front check


class VisualTask(Task):
    """The training objective: answer-token cross-entropy averaged per sample (plus L2Wrap), on
    the VisualBatches that `VisualBatches` makes."""

    def __init__(self, vlm: VisualRWKV, l2wrap: bool = True):
        super().__init__()
        self.vlm, self.l2wrap = vlm, l2wrap

    @property
    def model(self) -> RWKV:  # what the shared trainer saves and state-tunes
        return self.vlm.model

    def forward(self, batch: VisualBatch):
        logits, _ = self.vlm(batch.inputs, batch.pixels, batch.image_spans)
        loss = per_sample_loss(logits, batch.targets, batch.loss_mask)
        return L2Wrap.apply(loss, logits) if self.l2wrap and self.training else loss

    def save_pretrained(self, run: Run) -> None:
        self.vlm.save_pretrained(run)


class VisualBatches:
    """A VisualDataset as the shared trainer's data: random batches and a fixed pass in order.

    Samples longer than ctx_len + 1 tokens are cut at the end (an image must fit whole).
    """

    def __init__(self, dataset: VisualDataset):
        if len(dataset) == 0:
            raise DataError("the visual dataset is empty")
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def batch_at(self, indices, ctx_len: int):
        """The samples at `indices`, collated (padded to the longest, cut at ctx_len)."""
        samples = []
        for i in indices:
            pixels, layout = self.dataset[i]
            if layout.image_span[1] >= ctx_len + 1:
                raise DataError(f"sample {i}: its image ends at token {layout.image_span[1]}, beyond ctx_len {ctx_len}")
            samples.append((pixels, layout))
        return collate_visual(samples).truncated(ctx_len)

    def sample_indices(self, batch_size: int, ctx_len: int, generator=None) -> list[int]:
        """batch_size random sample indices; a process of several reads only its share of them
        (`train.rank_batch`), not every rank's images."""
        return torch.randint(len(self), (batch_size,), generator=generator).tolist()

    def sample_batch(self, batch_size: int, ctx_len: int, generator=None):
        return self.batch_at(self.sample_indices(batch_size, ctx_len, generator), ctx_len)

    def iter_indices(self, batch_size: int, ctx_len: int):
        """The sample indices of `iter_batches`' batches, in order, a list per batch."""
        for start in range(0, len(self), batch_size):
            yield list(range(start, min(start + batch_size, len(self))))

    def iter_batches(self, batch_size: int, ctx_len: int):
        for indices in self.iter_indices(batch_size, ctx_len):
            yield self.batch_at(indices, ctx_len)


def vocabulary_of(records: Sequence[VisualRecord], world: WorldTokenizer, n_image_tokens: int,
                  image_position: str) -> list[int]:
    """Sorted World ids the records' conversations use, plus 0 and the 256 byte tokens."""
    return ids_in(encode_conversation(record.turns, world.encode, n_image_tokens, image_position).ids
                  for record in records)


def drop_unreadable_images(records: Sequence[VisualRecord], where, max_pixels: int = DEFAULT_MAX_PIXELS,
                           progress: bool = True) -> list[VisualRecord]:
    """The records whose image decodes (and the text-only ones): every distinct image is read once,
    up front, so a bad file cannot stop training at whichever step first draws it.

    Unreadable images are skipped and counted, as `visual caption` and `visual eval` do: a warning
    names the first few and gives the count. Data none of whose images can be read (most likely a
    wrong image folder) is refused with one DataError naming the count and the first bad file.
    """
    from tqdm import tqdm

    paths = list(dict.fromkeys(r.image for r in records if r.image is not None))  # distinct, in order
    main = is_main_process()  # under DeepSpeed every rank checks (all keep the same records), rank 0 reports
    problems = []
    # the bar shows once the check takes more than a second: on large datasets
    with ThreadPoolExecutor() as pool, tqdm(total=len(paths), desc="checking images", unit="image", delay=1,
                                            disable=not (progress and main)) as bar:
        # Pillow decodes outside the GIL; chunks keep the pending work small on millions of images
        for start in range(0, len(paths), CHECK_CHUNK):
            chunk = paths[start:start + CHECK_CHUNK]
            problems += pool.map(lambda path: image_error(path, max_pixels), chunk)
            bar.update(len(chunk))
    bad = [(path, error) for path, error in zip(paths, problems) if error is not None]
    if bad and len(bad) == len(paths):
        raise DataError(f"{where}: none of its {len(paths)} images can be read, e.g. {bad[0][1]}")
    if bad and main:
        warn_skipped(bad)
        tqdm.write(f"warning: {where}: {len(bad)} of {len(paths)} images unreadable, skipped", file=sys.stderr)
    unreadable = {path for path, _ in bad}
    return [r for r in records if r.image not in unreadable]


def train_visual(config, data, out_dir, *, val=None, stage: int = 2, clip=None, random_encoder=False,
                 init=None, max_steps=None, resume=False, seed=None, progress=True, deepspeed_config=None,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> float:
    """Train a VisualRWKV on a JSONL of captions or LLaVA conversations; returns the last loss.

    clip:   open_clip weights for the encoder (e.g. from `eaglefinch visual clip-train`)
    init:   a visual run folder (continue, e.g. stage 2 from stage 1: its encoder and projector
            are reused), or a language model (a text run folder, .safetensors or .pth) to build on
    random_encoder: an untrained encoder (set "freeze_encoder": false so it learns)
    max_pixels: larger images are unreadable (a decompression-bomb guard)
    Records whose image cannot be read are skipped with a warning (`drop_unreadable_images`).
    """
    run_config = RunConfig.load(config, "visual")
    train_cfg = run_config.train.with_overrides(max_steps, seed)
    if train_cfg.segment_len is not None:  # an image's span is scanned both ways: it cannot be cut into segments
        raise ValueError(f"{config}: visual training does not read samples in segments; remove \"segment_len\"")
    if train_cfg.train_mode == "lora":  # the projector trains too, and a visual run's files hold it whole
        raise ValueError(f"{config}: train_mode \"lora\" is for text and music runs; a visual run trains "
                         f"\"full\" (stage 1 or 2) or \"state\"")
    records = drop_unreadable_images(read_records(data), data, max_pixels, progress)
    val_records = drop_unreadable_images(read_records(val), val, max_pixels, progress) if val else None
    init_run = Run.open(init) if init is not None else None
    torch.manual_seed(train_cfg.seed)  # a new model's (and encoder's) weights follow the run's seed

    if init_run is not None and init_run.found_domain == "visual":  # everything comes from the visual run
        if clip is not None or random_encoder:
            raise ValueError(f"{init} is a visual run and brings its own encoder: drop --clip / --random-encoder")
        vlm, tokenizer = VisualRun.open(init).load()
        run_config = dataclasses.replace(run_config, model=None, section=dataclasses.asdict(vlm.cfg))
    else:
        vcfg = VisualConfig.from_dict(run_config.section)
        if (clip is None) == (not random_encoder):
            raise ValueError("give the encoder's weights (--clip PATH, e.g. from `eaglefinch visual clip-train`) "
                             "or ask for an untrained one (--random-encoder), not both")
        encoder = VisionEncoder(vcfg.encoder, pretrained=str(clip) if clip else None, random_init=random_encoder,
                                layer=vcfg.layer, pool=vcfg.pool, freeze=vcfg.freeze_encoder, cls_token=vcfg.cls_token)
        if init_run is not None:
            model, tokenizer = TextRun.open(init).load()
            run_config = dataclasses.replace(run_config, model=None)  # the model is the checkpoint's
        elif vcfg.trim_vocab:
            world = WorldTokenizer()
            tokenizer = SubsetTokenizer(world, vocabulary_of(records + (val_records or []), world, encoder.n_tokens,
                                                             vcfg.image_position))
            model = RWKV(run_config.model_config(vocab_size=tokenizer.vocab_size), progress=progress)
        else:
            model, tokenizer = RWKV(run_config.model_config(), progress=progress), WorldTokenizer()
        vlm = VisualRWKV(model, encoder, vcfg)
    vlm.set_stage(stage)
    vlm.train()

    def batches(recs):
        return VisualBatches(VisualDataset(recs, vlm.encoder.preprocess, tokenizer.encode, vlm.n_image_tokens,
                                           vlm.cfg.image_position, max_pixels))

    run = Run(out_dir)
    run.folder.mkdir(parents=True, exist_ok=True)
    if is_main_process():  # under DeepSpeed, rank 0 alone writes the run's files
        save_vocabulary(run, tokenizer)
        run.save_config(run_config)
    task = VisualTask(vlm, train_cfg.l2wrap)
    return train(task, train_cfg, batches(records), run.folder, val_data=val_records and batches(val_records),
                 resume=resume, progress=progress, deepspeed_config=deepspeed_config,
                 extra={"visual_stage": stage})

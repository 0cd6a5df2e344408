"""Visual training on the shared trainer: stage 1 (projector) and stage 2 (projector + backbone).

A run config has three sections: "model" (the RWKV, used when not starting from `init`), "train"
(rwkv_core.train.TrainConfig; ctx_len caps the sample length) and "visual" (VisualConfig).
The run folder gets the trainer's files (model.safetensors, checkpoint.pt, metrics.jsonl,
loss.png) plus visual.json / visual.safetensors, and vocab_subset.json with a trimmed vocabulary.
"""
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from rwkv_core import RWKV, RWKVConfig
from rwkv_core.data import DataError
from rwkv_core.runs import copy_config, model_file, run_config
from rwkv_core.train import L2Wrap, is_main_process, train
from text.subset import SubsetTokenizer, ids_in
from text.tokenizer import WorldTokenizer
from text.train import VOCAB_FILE, tokenizer_for
from visual.data import VisualDataset, VisualRecord, collate_visual, read_records
from visual.encoder import VisionEncoder
from visual.model import CONFIG_FILE, VisualConfig, VisualRWKV
from visual.prompt import encode_conversation, per_sample_loss

SECTIONS = ("model", "train", "visual")


class VisualTask(nn.Module):
    """The training objective: answer-token cross-entropy averaged per sample (plus L2Wrap).

    Batches are (inputs, targets, loss_mask, pixels, spans), as `VisualBatches` makes them.
    """

    def __init__(self, vlm: VisualRWKV, l2wrap: bool = True):
        super().__init__()
        self.vlm, self.l2wrap = vlm, l2wrap

    @property
    def model(self) -> RWKV:  # what the shared trainer saves and state-tunes
        return self.vlm.model

    def forward(self, batch):
        inputs, targets, loss_mask, pixels, spans = batch
        logits, _ = self.vlm(inputs, pixels, spans)
        loss = per_sample_loss(logits, targets, loss_mask)
        return L2Wrap.apply(loss, logits) if self.l2wrap and self.training else loss


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

    def batch(self, indices, ctx_len: int):
        samples = []
        for i in indices:
            pixels, layout = self.dataset[i]
            if layout.image_span[1] >= ctx_len + 1:
                raise DataError(f"sample {i}: its image ends at token {layout.image_span[1]}, beyond ctx_len {ctx_len}")
            samples.append((pixels, layout))
        pixels, b = collate_visual(samples)
        T = min(b.inputs.shape[1], ctx_len)
        return b.inputs[:, :T], b.targets[:, :T], b.loss_mask[:, :T], pixels, b.image_spans

    def sample_batch(self, batch_size: int, ctx_len: int, generator=None):
        return self.batch(torch.randint(len(self), (batch_size,), generator=generator).tolist(), ctx_len)

    def iter_batches(self, batch_size: int, ctx_len: int):
        for start in range(0, len(self), batch_size):
            yield self.batch(range(start, min(start + batch_size, len(self))), ctx_len)


def vocabulary_of(records: Sequence[VisualRecord], world: WorldTokenizer, n_image_tokens: int,
                  image_position: str) -> list[int]:
    """Sorted World ids the records' conversations use, plus 0 and the 256 byte tokens."""
    return ids_in(encode_conversation(record.turns, world.encode, n_image_tokens, image_position).ids
                  for record in records)


def check_images(records: Sequence[VisualRecord], where) -> None:
    """Fail before training, not at step 5000, if an image file is missing."""
    missing = [r.image for r in records if r.image is not None and not r.image.is_file()]
    if missing:
        raise DataError(f"{where}: {len(missing)} image file(s) missing, e.g. {missing[0]}")


def train_visual(config_path, data, out_dir, *, val=None, stage: int = 2, clip=None, random_encoder=False,
                 init=None, max_steps=None, resume=False, seed=None, progress=True, deepspeed_config=None) -> float:
    """Train a VisualRWKV on a JSONL of captions or LLaVA conversations; returns the last loss.

    clip:   open_clip weights for the encoder (e.g. from `eaglefinch visual clip-train`)
    init:   a visual run folder (continue, e.g. stage 2 from stage 1: its encoder and projector
            are reused), or a language model (.pth / .safetensors / text run folder) to build on
    random_encoder: an untrained encoder (set "freeze_encoder": false so it learns)
    """
    cfg, train_cfg = run_config(config_path, SECTIONS, max_steps, seed)
    out_dir = Path(out_dir)
    records = read_records(data)
    check_images(records, data)
    val_records = read_records(val) if val else None
    if val_records:
        check_images(val_records, val)
    init = Path(init) if init else None

    if init is not None and (init / CONFIG_FILE).is_file():  # a visual run: everything comes from it
        if clip is not None or random_encoder:
            raise ValueError(f"{init} is a visual run and brings its own encoder: drop --clip / --random-encoder")
        vlm = VisualRWKV.load(init)
        vcfg, tokenizer = vlm.cfg, tokenizer_for(init)
    else:
        vcfg = VisualConfig.from_dict(cfg.get("visual", {}))
        if (clip is None) == (not random_encoder):
            raise ValueError("give the encoder's weights (--clip PATH, e.g. from `eaglefinch visual clip-train`) "
                             "or ask for an untrained one (--random-encoder), not both")
        encoder = VisionEncoder(vcfg.encoder, pretrained=str(clip) if clip else None, random_init=random_encoder,
                                layer=vcfg.layer, pool=vcfg.pool, freeze=vcfg.freeze_encoder, cls_token=vcfg.cls_token)
        if init is not None:
            model, tokenizer = RWKV.from_pretrained(model_file(init)), tokenizer_for(init)
        elif "model" not in cfg:
            raise ValueError(f"{config_path}: no \"model\" section, and no --init model to build on")
        elif vcfg.trim_vocab:
            world = WorldTokenizer()
            ids = vocabulary_of(records + (val_records or []), world, encoder.n_tokens, vcfg.image_position)
            tokenizer = SubsetTokenizer(world, ids)
            model = RWKV(RWKVConfig.from_dict({**cfg["model"], "vocab_size": len(ids)}))
        else:
            model, tokenizer = RWKV(RWKVConfig.from_dict(cfg["model"])), WorldTokenizer()
        vlm = VisualRWKV(model, encoder, vcfg)
    vlm.set_stage(stage)
    vlm.train()

    def batches(recs):
        return VisualBatches(VisualDataset(recs, vlm.encoder.preprocess, tokenizer.encode, vlm.n_image_tokens,
                                           vcfg.image_position))

    out_dir.mkdir(parents=True, exist_ok=True)
    main = is_main_process()
    if main:
        if isinstance(tokenizer, SubsetTokenizer):
            tokenizer.save(out_dir / VOCAB_FILE)
        elif (out_dir / VOCAB_FILE).exists():
            (out_dir / VOCAB_FILE).unlink()
        copy_config(config_path, out_dir)
    task = VisualTask(vlm, train_cfg.l2wrap)
    loss = train(task, train_cfg, batches(records), out_dir, val_data=val_records and batches(val_records),
                 resume=resume, progress=progress, deepspeed_config=deepspeed_config,
                 extra={"visual_stage": stage})
    if main:
        vlm.save_visual(out_dir)
    return loss


def load_visual(run_dir, device="cpu"):
    """(VisualRWKV, tokenizer) of a visual run folder."""
    return VisualRWKV.load(run_dir, device), tokenizer_for(run_dir)

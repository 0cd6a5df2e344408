"""VisualRWKV: an image encoder and a projector feeding image tokens into the shared RWKV backbone.

    pixels [B, 3, H, W] -> VisionEncoder -> [B, N, width] -> projector -> [B, N, n_embd]
    token ids [B, T] -> embedding -> image tokens written over each sample's image span -> RWKV

With `bidirectional`, odd-numbered blocks read the patch tokens of each span backwards (the
backbone's `reverse_span`); the class token, which the encoder puts last, stays outside the
reversed span as in VisualRWKV, so every layer reads it after all the patches.

A visual run folder (visual/run.py) holds the language model's files (model.safetensors, and
vocab_subset.json when the vocabulary is trimmed) and visual.json, the VisualConfig. The projector
and encoder weights are in model.safetensors too, as "visual.projector.*" and "visual.encoder.*":
one file, written at once, so a run killed at any moment never pairs a backbone with a projector
of another step.
"""
import concurrent.futures
import dataclasses
import hashlib
import json
from dataclasses import dataclass

import torch
from torch import nn

from eaglefinch.rwkv_core import RWKV
from eaglefinch.rwkv_core.checkpoint import (CheckpointError, domain_tensors, model_from_state_dict, read_state_dict,
                                              save_model)
from eaglefinch.rwkv_core.config import dataclass_from_dict
from eaglefinch.rwkv_core.files import write_json_atomic
from eaglefinch.rwkv_core.scheduler import LRUCache, tensor_bytes
from eaglefinch.visual.encoder import DEFAULT_MODEL, VisionEncoder
from eaglefinch.visual.projector import PROJECTOR_KINDS, build_projector
from eaglefinch.visual.prompt import IMAGE_POSITIONS, splice_image_tokens

CONFIG_FILE = "visual.json"
FEATURE_CACHE_MB = 256   # encoder tokens kept for inference: ~220 ViT-L/14-336 images in bf16 (577 x 1024 x 2 bytes each)


@dataclass
class VisualConfig:
    """How images enter the model; the "visual" section of a visual training config."""

    encoder: str = DEFAULT_MODEL     # open_clip model name
    layer: int = -1                  # encoder block whose output is used (-2: LLaVA's penultimate)
    pool: int = 1                    # k x k average pooling of the patch grid
    cls_token: bool = True           # append the class token after the patches
    freeze_encoder: bool = True
    projector: str = "linear"        # "linear" (the paper) or "mlp"
    image_position: str = "first"    # "inline", "first" or "sandwich" (see visual/prompt.py)
    bidirectional: bool = True       # odd blocks read the patches backwards
    trim_vocab: bool = False         # train a new model on the World ids the data uses (small models)

    @classmethod
    def from_dict(cls, d: dict) -> "VisualConfig":
        cfg = dataclass_from_dict(cls, d, "visual config")
        if cfg.projector not in PROJECTOR_KINDS:
            raise ValueError(f"projector must be one of {PROJECTOR_KINDS}, got {cfg.projector!r}")
        if cfg.image_position not in IMAGE_POSITIONS:
            raise ValueError(f"image_position must be one of {IMAGE_POSITIONS}, got {cfg.image_position!r}")
        return cfg


class VisualRWKV(nn.Module):
    """`logits, state = vlm(inputs, pixels, spans, state)`: an RWKV reading text with images in it.

    inputs: [B, T] token ids (fill ids inside the image spans); pixels: [B, 3, H, W] or None;
    spans: B (start, end) image spans in `inputs` (start == end: no image in that sample).
    """

    def __init__(self, model: RWKV, encoder: VisionEncoder, cfg: VisualConfig):
        super().__init__()
        self.model, self.encoder, self.cfg = model, encoder, cfg
        self.projector = build_projector(cfg.projector, encoder.width, model.cfg.n_embd)
        self.features = LRUCache(FEATURE_CACHE_MB * 2 ** 20)   # see cached_image_embeds; no part of the weights

    @property
    def n_image_tokens(self) -> int:
        return self.encoder.n_tokens

    def image_embeds(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, N, n_embd]."""
        return self.projector(self.encoder(pixels))

    @torch.no_grad()
    def cached_image_embeds(self, pixels: torch.Tensor) -> torch.Tensor:
        """`image_embeds` for inference, the tower run once per distinct image: [B, 3, H, W] -> [B, N, n_embd].

        Each image's encoder tokens are kept in `self.features` (an LRU of FEATURE_CACHE_MB on the
        encoder's device) under the SHA-256 of its pixels and the tower's dtype; an image seen
        before, in this batch or an earlier call (the same image under another question), skips the
        tower and only the projector runs. `features.hits` / `misses` count images. For inference
        only: the encoder's weights must not change while the cache is in use."""
        keys = pixel_digests(pixels, self.encoder.dtype)
        found = {key: self.features.get(key) for key in keys}
        misses = [key for key, tokens in found.items() if tokens is None]
        self.features.hits += len(keys) - len(misses)
        self.features.misses += len(misses)
        device = next(self.encoder.parameters()).device
        if misses:
            first = {key: i for i, key in reversed(list(enumerate(keys)))}
            tokens = self.encoder(pixels[[first[key] for key in misses]].to(device))
            for key, t in zip(misses, tokens):
                found[key] = t.clone()   # not a view: the batch's tensor is not kept alive
                self.features.put(key, found[key], tensor_bytes(found[key]))
        return self.projector(torch.stack([found[key].to(device) for key in keys]))

    def input_embeds(self, inputs: torch.Tensor, spans, image_embeds=None) -> torch.Tensor:
        """The embedded token ids [B, T] with each sample's image tokens [B, N, n_embd] (or None) in its span."""
        embeds = self.model.emb(inputs)
        if image_embeds is None:
            return embeds
        return splice_image_tokens(embeds, image_embeds.to(embeds.dtype), spans)

    def scan_spans(self, spans):
        """The spans odd blocks reverse: the patch tokens only (the class token is the last image token)."""
        if not self.cfg.bidirectional:
            return None
        n_extra = 1 if self.encoder.cls_token else 0
        return [(start, max(start, end - n_extra)) for start, end in spans]

    def forward_hidden(self, inputs, pixels, spans, state=None):
        """(hidden [B, T, C] after ln_out, new state): `forward` without the head, so that a prefill
        can apply the head to its last position only."""
        embeds = self.input_embeds(inputs, spans, None if pixels is None else self.image_embeds(pixels))
        return self.model.forward_hidden(embeds=embeds, state=state, reverse_span=self.scan_spans(spans))

    def forward(self, inputs, pixels, spans, state=None):
        hidden, state = self.forward_hidden(inputs, pixels, spans, state)
        return self.model.head(hidden), state

    def set_stage(self, stage: int) -> None:
        """Stage 1: only the projector trains (backbone frozen). Stage 2: projector and backbone.
        The encoder trains only if the config unfroze it."""
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {stage}")
        self.model.requires_grad_(stage == 2)
        self.projector.requires_grad_(True)
        self.encoder.requires_grad_(not self.encoder.frozen)

    def save_pretrained(self, run) -> None:
        """Write the run's inference files: visual.json, then model.safetensors with every weight."""
        weights = {f"visual.projector.{k}": v for k, v in self.projector.state_dict().items()}
        weights.update({f"visual.encoder.{k}": v for k, v in self.encoder.tower.state_dict().items()})
        write_json_atomic(run.file(CONFIG_FILE), dataclasses.asdict(self.cfg))
        save_model(self.model, run.model_file, domain_tensors=weights)

    @classmethod
    def load(cls, run, device="cpu") -> "VisualRWKV":
        """A trained VisualRWKV from a visual run (visual.json + model.safetensors), in eval mode."""
        if not run.file(CONFIG_FILE).is_file():
            raise CheckpointError(f"{run.folder}: not a visual run folder (no {CONFIG_FILE})")
        try:
            cfg = VisualConfig.from_dict(json.loads(run.file(CONFIG_FILE).read_text()))
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"{run.file(CONFIG_FILE)}: invalid visual config ({e})") from None
        sd, meta = read_state_dict(run.model_file)
        model = model_from_state_dict(sd, meta, run.model_file, device=device)
        encoder = VisionEncoder(cfg.encoder, random_init=True, layer=cfg.layer, pool=cfg.pool,
                                freeze=cfg.freeze_encoder, cls_token=cfg.cls_token)
        vlm = cls(model, encoder, cfg)
        weights = domain_tensors(sd, "visual")
        for prefix, module in (("projector.", vlm.projector), ("encoder.", vlm.encoder.tower)):
            part = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
            try:
                module.load_state_dict(part)
            except RuntimeError as e:
                raise CheckpointError(f"{run.model_file}: visual {prefix.rstrip('.')} weights do not fit "
                                      f"the config: {str(e).splitlines()[0]}") from None
        return vlm.to(device).eval()


def pixel_digest(image: torch.Tensor, dtype: torch.dtype) -> str:
    """The feature cache's key of one image [3, H, W]: SHA-256 of its pixels as fp32 on the host and
    the dtype its tokens are computed in."""
    h = hashlib.sha256(str(dtype).encode())
    h.update(image.detach().to("cpu", torch.float32).contiguous().numpy())
    return h.hexdigest()


HASH_THREADS = 8


def pixel_digests(pixels: torch.Tensor, dtype: torch.dtype) -> list[str]:
    """`pixel_digest` of every image of a batch [B, 3, H, W]: one copy of the batch to the host, then
    the images hashed in threads (hashlib lets go of the GIL on large buffers; one 336 px image took
    1.3 ms on the H100 machine's host, 84 ms for 64 in a row: more than the tower's 52 ms)."""
    host = pixels.detach().to("cpu", torch.float32)
    if len(host) == 1:
        return [pixel_digest(host[0], dtype)]
    with concurrent.futures.ThreadPoolExecutor(min(HASH_THREADS, len(host))) as pool:
        return list(pool.map(lambda image: pixel_digest(image, dtype), host))

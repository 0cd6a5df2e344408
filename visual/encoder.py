"""The image encoder: any open_clip vision tower, turned into a sequence of patch tokens.

Weights come from one explicit source, and nothing is guessed:
    pretrained=PATH     an open_clip state-dict file, e.g. one written by `visual.clip_train`
    pretrained=TAG      an open_clip tag such as "openai" (needs the model hub to be reachable)
    random_init=True    an untrained tower (tests; or a tower that trains with the rest)
With neither, construction fails with a message saying how to get weights offline.

Tokens come from the output of one transformer block (`layer`, -1 = last, -2 = the penultimate
block LLaVA uses) before the final LayerNorm, as in VisualRWKV. Optional k x k average pooling
shrinks the g x g patch grid to ceil(g/k) x ceil(g/k) tokens. The class token follows the patches
(VisualRWKV's order; `cls_token=False` drops it, and towers without one, such as SigLIP's, need
that). It matters: a tiny VisualRWKV on the shapes reached 91.5% exact held-out captions with it
and 79.5% without, all else equal. The tower is frozen by default: no gradients, and
it stays in eval mode even when the surrounding model trains.

`DEFAULT_MODEL` is a 64 px, patch-8, width-64, 2-block ViT registered from visual/model_configs/
(0.12M vision parameters, 3.3M with its CLIP text tower): 64 patch tokens, 16 with pool=2, plus CLS.
Patch 16 would be faster still, but its CLIP training collapsed to chance on the shapes data.
"""
import contextlib
import logging
import math
import os
from pathlib import Path
from typing import Optional

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from eaglefinch.rwkv_core.checkpoint import one_line, torch_load_problem

CONFIG_DIR = Path(__file__).parent / "model_configs"
DEFAULT_MODEL = "EagleFinch-ViT-Tiny"


def register_model_configs() -> None:
    """Make the configs in visual/model_configs/ known to open_clip by name (idempotent)."""
    names = {p.stem for p in CONFIG_DIR.glob("*.json")}
    if not names <= set(open_clip.list_models()):
        open_clip.add_model_config(CONFIG_DIR)


class VisionEncoder(nn.Module):
    """images [B, 3, H, W] (from `preprocess`) -> tokens [B, n_tokens, width].

    Attributes: n_tokens, width, image_size (H, W), preprocess (the eval transform, PIL RGB -> [3, H, W]).
    """

    def __init__(
        self,
        model_name: str = DEFAULT_MODEL,
        pretrained: Optional[str] = None,
        layer: int = -1,
        pool: int = 1,
        freeze: bool = True,
        random_init: bool = False,
        cls_token: bool = True,
    ):
        super().__init__()
        if not isinstance(pool, int) or pool < 1:
            raise ValueError(f"pool must be an integer >= 1, got {pool!r}")
        register_model_configs()
        if model_name not in open_clip.list_models():
            raise ValueError(f"unknown open_clip model {model_name!r}; see open_clip.list_models()")
        model, self.preprocess = _create(model_name, _check_weights(model_name, pretrained, random_init))
        self.model_name, self.layer, self.pool, self.cls_token = model_name, layer, pool, cls_token
        self.tower = model.visual  # the text tower is not needed and is dropped here
        self.frozen = freeze
        if freeze:
            self.tower.requires_grad_(False)
            self.tower.eval()
        size = open_clip.get_model_preprocess_cfg(model)["size"]
        self.image_size = (size, size) if isinstance(size, int) else tuple(size)  # (H, W)
        try:
            with torch.no_grad():  # one probe image gives n_tokens and width for any tower type
                probe = self._tokens(torch.zeros(1, 3, *self.image_size))
        except AssertionError as e:  # open_clip checks the block index with an assertion
            raise ValueError(f"layer {layer} does not exist in {model_name}: {e}") from None
        self.n_tokens, self.width = probe.shape[1], probe.shape[2]

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:  # a frozen tower keeps eval behaviour (dropout, norm statistics)
            self.tower.eval()
        return self

    @property
    def dtype(self) -> torch.dtype:
        return next(self.tower.parameters()).dtype

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] normalised as by `preprocess` (fp32) -> tokens [B, n_tokens, width] in
        the tower's dtype (the images are cast to it: a bf16 tower takes `preprocess`'s output)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return self._tokens(images.to(self.dtype))

    def _tokens(self, images: torch.Tensor) -> torch.Tensor:
        out = self.tower.forward_intermediates(
            images, indices=[self.layer], intermediates_only=True, output_fmt="NCHW", output_extra_tokens=self.cls_token
        )
        grid = out["image_intermediates"][0]  # [B, width, g, g]
        if self.pool > 1:
            h, w = grid.shape[-2:]
            grid = F.adaptive_avg_pool2d(grid, (math.ceil(h / self.pool), math.ceil(w / self.pool)))
        tokens = grid.flatten(2).transpose(1, 2)  # [B, g*g, width], row-major over the grid
        if self.cls_token:
            prefix = out.get("image_intermediates_prefix")
            if prefix is None:
                raise ValueError(f"{self.model_name} has no class token; use cls_token=False")
            tokens = torch.cat([tokens, prefix[0]], dim=1)
        return tokens


@contextlib.contextmanager
def quiet_logging():
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _create(model_name: str, weights: Optional[str]):
    """open_clip model and eval transform, with its loading errors turned into one clear message."""
    try:
        # random init was asked for explicitly: open_clip's "no pretrained weights" warning would only alarm
        with quiet_logging() if weights is None else contextlib.nullcontext():
            model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=weights)
    except Exception as e:
        if weights is None:
            raise
        # open_clip reads a weights file with torch.load(weights_only=True): say what it found in
        # a few words, not torch's advice to turn weights_only off
        reason = torch_load_problem(e) or one_line(e)
        if not Path(weights).is_file():
            raise RuntimeError(
                f"could not fetch the {weights!r} weights of {model_name!r} (is the model hub reachable? "
                f"HF_HUB_OFFLINE is {os.environ.get('HF_HUB_OFFLINE', 'unset')}); pass a local weights file instead: {reason}"
            ) from None
        raise ValueError(f"cannot load {weights} into {model_name!r}: {reason}") from None
    return model, preprocess


def _check_weights(model_name: str, pretrained: Optional[str], random_init: bool) -> Optional[str]:
    """The value for open_clip's `pretrained`, or a ValueError explaining how to get weights."""
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if random_init:
        if pretrained is not None:
            raise ValueError("pass either pretrained=... or random_init=True, not both")
        return None
    if pretrained is None:
        raise ValueError(
            f"no weights given for the vision tower {model_name!r}: pass pretrained=<path to an open_clip "
            f"state-dict file> (offline, train one on local image-caption pairs with visual.clip_train), "
            + (f"a tag such as {tags[0]!r} ({len(tags)} known) when the model hub is reachable, " if tags else "")
            + "or random_init=True for an untrained tower"
        )
    if Path(pretrained).is_file():
        return str(pretrained)
    if pretrained in tags:
        return pretrained
    raise ValueError(
        f"pretrained={pretrained!r} is neither a file nor a known tag for {model_name!r} (tags: {tags or 'none'})"
    )

"""The ablation's model variants: Finch with one of its parts taken out, built here and not in the core.

    model = build_variant("static-decay", cfg)     # an RWKV whose blocks use the variant's modules

| variant        | what changes against Finch (`rwkv_core.model`)                                        |
|----------------|---------------------------------------------------------------------------------------|
| `finch`        | nothing: the core model                                                               |
| `no-shift`     | no token shift anywhere: time-mix and channel-mix read the current token alone       |
| `static-shift` | Eagle-style lerp: per-channel static weights on the previous token, no ddlerp LoRA   |
| `static-decay` | no decay LoRA: w from time_decay alone, per channel, the same at every token          |
| `eagle`        | the core Eagle (RWKV-5.2): static shift and static decay, its own parametrisation     |

Head sizes are not variants here: `RWKVConfig(head_size=...)` of the core model (equal width gives
equal parameter counts).

A variant swaps each block's `att` (and for `no-shift` its `ffn`) for a module from this file and
keeps the official parameter names, so the trainer's parameter groups treat it as they treat
Finch. Parameters a variant does not use are removed (the parameter counts are honest). Variants
are trained and scored through the model's forward only, never through the inference engine, whose
decode step restates the core blocks and knows nothing of them.
"""
import torch
import torch.nn as nn

from eaglefinch.rwkv_core import RWKV, RWKVConfig
from eaglefinch.rwkv_core.model import ChannelMix, TimeMixFinch

VARIANTS = ("finch", "no-shift", "static-shift", "static-decay", "eagle")
TARGETS = ("w", "k", "v", "r", "g")   # the ddlerp's order: decay, key, value, receptance, gate


class TimeMixVariant(TimeMixFinch):
    """Finch's time-mix with its token shift and its decay each chosen:

    shift: "ddlerp" (Finch), "static" (x + (prev - x) * time_maa_*, per channel) or "none" (x alone);
    decay: "lora" (Finch: time_decay + a LoRA of the shifted input, per token) or "static" (time_decay).

    shift="ddlerp", decay="lora" is Finch itself (tests check it against `TimeMixFinch`). The
    parameters are Finch's (its initialisation), less those the choice leaves unused.
    """

    def __init__(self, cfg: RWKVConfig, layer_id: int, shift: str, decay: str):
        if shift not in ("ddlerp", "static", "none") or decay not in ("lora", "static"):
            raise ValueError(f"unknown time-mix variant: shift {shift!r}, decay {decay!r}")
        super().__init__(cfg, layer_id)
        self.shift, self.decay = shift, decay
        # the decay's input is mixed only when the decay reads it
        self.targets = TARGETS if decay == "lora" else TARGETS[1:]
        finch = {name: p.data for name, p in self.named_parameters(recurse=False)}
        for name in finch:
            delattr(self, name)
        for name, value in self.from_finch(finch).items():
            setattr(self, name, nn.Parameter(value.clone()))

    def from_finch(self, finch: dict) -> dict:
        """A Finch time-mix's parameters or state dict (name -> tensor) made this variant's: the ones
        it does not use left out, the ddlerp LoRA without the decay's slot when the decay is static."""
        unused = set()
        if self.decay == "static":
            unused |= {"time_decay_w1", "time_decay_w2", "time_maa_w"}
        if self.shift != "ddlerp":
            unused |= {"time_maa_x", "time_maa_w1", "time_maa_w2"}
        if self.shift == "none":
            unused |= {f"time_maa_{t}" for t in TARGETS}
        mine = {name: value for name, value in finch.items() if name not in unused}
        if self.shift == "ddlerp" and self.decay == "static":
            C, D = mine["time_maa_w1"].shape[0], mine["time_maa_w1"].shape[1] // 5
            mine["time_maa_w1"] = mine["time_maa_w1"].view(C, 5, D)[:, 1:].reshape(C, 4 * D)   # [C, 4D]
            mine["time_maa_w2"] = mine["time_maa_w2"][1:]                                      # [4, D, C]
        return mine

    def shifted(self, x, prev) -> dict:
        """The input each target reads: {"w"?, "k", "v", "r", "g"} -> [B, T, C]."""
        if self.shift == "none":
            return {t: x for t in self.targets}
        delta = prev - x
        offsets = [0.0] * len(self.targets)
        if self.shift == "ddlerp":   # one LoRA gives every target its data-dependent offset
            B, T, C = x.shape
            h = torch.tanh((x + delta * self.time_maa_x) @ self.time_maa_w1)            # [B, T, nD]
            h = h.view(B * T, len(self.targets), -1).transpose(0, 1)                   # [n, BT, D]
            offsets = torch.bmm(h, self.time_maa_w2).view(len(self.targets), B, T, C).unbind(0)
        return {t: x + delta * (getattr(self, f"time_maa_{t}") + m) for t, m in zip(self.targets, offsets)}

    def mix(self, x, prev):
        B, T, C = x.shape
        xs = self.shifted(x, prev)
        if self.decay == "lora":
            d = self.time_decay + torch.tanh(xs["w"] @ self.time_decay_w1) @ self.time_decay_w2   # [B, T, A]
            w_log = -torch.exp(d.float()).view(B, T, self.n_head, self.head_size)
        else:   # as Eagle's: [H, N], the same at every position
            w_log = -torch.exp(self.time_decay.float()).view(self.n_head, self.head_size)
        return (self.receptance(xs["r"]), self.key(xs["k"]), self.value(xs["v"]), self.gate(xs["g"]), w_log)


class ChannelMixNoShift(ChannelMix):
    """Finch's channel-mix without the token shift: key and receptance read the current token."""

    def _init_mix(self, ddd):
        pass   # no lerp weights

    def mix(self, x, prev):
        return x, x


TIME_MIX = {"no-shift": ("none", "lora"), "static-shift": ("static", "lora"), "static-decay": ("ddlerp", "static")}


def build_variant(variant: str, cfg: RWKVConfig) -> RWKV:
    """The RWKV of `variant` (VARIANTS) at the shape of `cfg`, with the official initialisation.

    A Finch variant is the core Finch (built under the caller's torch seed) with its modules
    swapped and their weights carried over, so under one seed every variant starts from Finch's
    weights, less the parts it takes out."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; variants: {', '.join(VARIANTS)}")
    if variant in ("finch", "eagle"):
        return RWKV(RWKVConfig(**{**cfg.to_dict(), "arch": variant}))
    if cfg.arch != "finch":
        raise ValueError(f"variant {variant} is built on Finch, got a config of arch {cfg.arch!r}")
    model = RWKV(cfg)
    for i, block in enumerate(model.blocks):
        att = TimeMixVariant(cfg, i, *TIME_MIX[variant])
        att.load_state_dict(att.from_finch(block.att.state_dict()))
        block.att = att
        if variant == "no-shift":
            ffn = ChannelMixNoShift(cfg, i)
            ffn.load_state_dict({k: v for k, v in block.ffn.state_dict().items() if not k.startswith("time_")})
            block.ffn = ffn
    return model

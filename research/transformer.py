"""The transformer baseline the mqar and efficiency experiments compare Eagle and Finch with: a small
causal transformer LM, pre-LN, rotary positions, PyTorch's scaled_dot_product_attention, and a KV
cache for decoding (`prefill` returns it, `decode` adds one token).

Rotary rather than learned positions: the efficiency experiment decodes at positions far beyond any
training length, and rotary positions have no table to size for the longest sequence (nor do they
add parameters that would grow with it); they are also what current transformer baselines use.

`build_model` makes any of the three models the experiments compare, at one width and depth.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from eaglefinch.rwkv_core import RWKV, RWKVConfig

ARCHS = ("eagle", "finch", "transformer")


@dataclass(frozen=True)
class TransformerConfig:
    vocab_size: int
    n_layer: int = 2
    n_embd: int = 64
    head_size: int = 64           # as RWKV's: n_head = n_embd // head_size
    mlp_ratio: int = 4            # the MLP's hidden width is mlp_ratio * n_embd (GELU)
    rope_base: float = 10000.0

    def __post_init__(self):
        if self.n_embd % self.head_size or self.head_size % 2:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of head_size ({self.head_size}), "
                             "and head_size even (rotary positions rotate pairs)")

    @property
    def n_head(self) -> int:
        return self.n_embd // self.head_size


@dataclass(frozen=True)
class KVCache:
    """Keys and values of every layer, preallocated for `capacity` positions; the first `length` are filled.

    k, v: [L, B, H, capacity, D]. Extending a cache writes the new positions into these buffers and
    returns a cache with the larger length; the cache given still reads as before (its positions are
    untouched), so decoding twice from one cache computes the same step twice."""

    k: torch.Tensor
    v: torch.Tensor
    length: int

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    @property
    def nbytes(self) -> int:
        """Bytes of the keys and values held for the filled positions (what grows with the sequence)."""
        return (self.k[:, :, :, :self.length].numel() + self.v[:, :, :, :self.length].numel()) * self.k.element_size()


def rotate(x, positions, base):
    """Rotary position embedding of x [B, H, T, D] at positions [T]: each pair (x_i, x_{i + D/2})
    rotated by the angle position * base^(-2i/D)."""
    D = x.shape[-1]
    inv_freq = base ** (-torch.arange(0, D, 2, device=x.device, dtype=torch.float32) / D)   # [D/2]
    angles = positions.to(torch.float32)[:, None] * inv_freq                               # [T, D/2]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)

    def forward(self, x, start, cache_k=None, cache_v=None):
        """x [B, T, C] at positions start..start+T-1. Without a cache: causal attention within x.
        With one (k, v buffers [B, H, capacity, D]): the new keys and values are written at
        start..start+T-1, and x attends to every position up to its own."""
        B, T, C = x.shape
        H, D = self.cfg.n_head, self.cfg.head_size
        q, k, v = self.qkv(x).view(B, T, 3, H, D).permute(2, 0, 3, 1, 4)       # 3 x [B, H, T, D]
        positions = torch.arange(start, start + T, device=x.device)
        q, k = rotate(q, positions, self.cfg.rope_base), rotate(k, positions, self.cfg.rope_base)
        if cache_k is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            cache_k[:, :, start:start + T] = k
            cache_v[:, :, start:start + T] = v
            k, v = cache_k[:, :, :start + T], cache_v[:, :, :start + T]
            if T == 1:      # one new token sees every cached position
                y = F.scaled_dot_product_attention(q, k, v)
            elif start == 0:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:           # is_causal aligns the mask top-left; new token i sees positions <= start + i
                mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(start)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd)
        self.attn = Attention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = nn.Sequential(nn.Linear(cfg.n_embd, cfg.mlp_ratio * cfg.n_embd, bias=False), nn.GELU(),
                                 nn.Linear(cfg.mlp_ratio * cfg.n_embd, cfg.n_embd, bias=False))

    def forward(self, x, start, cache_k=None, cache_v=None):
        x = x + self.attn(self.ln1(x), start, cache_k, cache_v)
        return x + self.mlp(self.ln2(x))


class Transformer(nn.Module):
    """Embedding -> blocks (pre-LN attention and MLP) -> LayerNorm -> head.

    `forward(idx)` gives the logits [B, T, V] of whole sequences (training; the reference the cached
    path is tested against); `prefill(idx)` the logits and a KV cache; `decode(token, cache)` one more
    token's logits and the extended cache."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_out = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        # GPT-2's initialisation: N(0, 0.02), the projections into the residual scaled by 1/sqrt(2L)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * cfg.n_layer) if name.endswith(("proj.weight", "mlp.2.weight")) else 0.02
                nn.init.normal_(p, std=std)

    def forward(self, idx):
        x = self.emb(idx)
        for block in self.blocks:
            x = block(x, 0)
        return self.head(self.ln_out(x))

    def empty_cache(self, batch_size: int, capacity: int) -> KVCache:
        cfg, w = self.cfg, self.emb.weight
        shape = (cfg.n_layer, batch_size, cfg.n_head, capacity, cfg.head_size)
        return KVCache(torch.empty(shape, device=w.device, dtype=w.dtype),
                       torch.empty(shape, device=w.device, dtype=w.dtype), 0)

    def extend(self, idx, cache: KVCache):
        """Logits [B, T, V] of idx [B, T] following the cache's positions, and the cache extended by T."""
        B, T = idx.shape
        start = cache.length
        if start + T > cache.capacity:
            raise ValueError(f"the KV cache holds {cache.capacity} positions; {start} + {T} do not fit")
        x = self.emb(idx)
        for i, block in enumerate(self.blocks):
            x = block(x, start, cache.k[i], cache.v[i])
        return self.head(self.ln_out(x)), KVCache(cache.k, cache.v, start + T)

    def prefill(self, idx, capacity: int | None = None):
        """Logits of idx [B, T] and a cache of them, with room for `capacity` positions (default T)."""
        B, T = idx.shape
        return self.extend(idx, self.empty_cache(B, max(capacity or T, T)))

    def decode(self, token, cache: KVCache):
        """Logits [B, V] of the next token, token [B], and the cache extended by it."""
        logits, cache = self.extend(token[:, None], cache)
        return logits[:, 0], cache

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_model(arch: str, vocab_size: int, n_layer: int, n_embd: int, head_size: int = 64):
    """Eagle, Finch or the transformer at one width and depth (and head size, capped at the width).
    The RWKV models keep their official initialisation and default FFN and LoRA sizes."""
    head_size = min(head_size, n_embd)
    if arch == "transformer":
        return Transformer(TransformerConfig(vocab_size, n_layer, n_embd, head_size))
    if arch not in ARCHS:
        raise ValueError(f"unknown model {arch!r}; choose from {', '.join(ARCHS)}")
    return RWKV(RWKVConfig(arch=arch, n_layer=n_layer, n_embd=n_embd, vocab_size=vocab_size, head_size=head_size))

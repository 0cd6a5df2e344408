"""Next-token sampling shared by text, music and visual generation.

One step of a generation loop (stop strings and stop tokens belong to the loop, not here):

    penalties = Penalties(cfg, batch_size, vocab_size, device=logits.device)
    logits = penalties.apply(logits)             # presence / frequency penalties
    ids = sample_logits(logits, cfg, generator)  # banned ids, temperature, top-k, top-p
    penalties.update(ids)                        # only generated ids, never the prompt

Deliberate differences from the official RWKV sampler (ChatRWKV `PIPELINE.sample_logits`):
* top_p >= 1 means no truncation. The official cutoff comes from an fp32 cumulative sum that often
  never reaches 1.0, which silently turns top_p = 1 into greedy decoding.
* Temperature divides the logits before truncation, so top_p's nucleus is chosen from the tempered
  distribution. The official code truncates at temperature 1, then raises the kept probabilities to
  the power 1/T. Both sample softmax(logits / T) restricted to the kept ids; only which ids top_p
  keeps can differ (top_k's choice does not depend on T).
* Ties: ids are ranked by probability, lower id first among equals, and top_k / top_p keep an exact
  prefix of that ranking. The official cutoff also keeps every id tied with the last one kept.
* top_k and top_p are both measured on the full (tempered) distribution and the kept set is their
  intersection: the first min(top_k, n_p) ranked ids, n_p being top_p's prefix length.
"""
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplerConfig:
    """Sampling settings; the defaults sample the model's distribution unchanged.

    Args:
        temperature: divides the logits; 0 means greedy (argmax, lowest id among ties).
        top_p: keep the smallest ranked prefix whose probability mass is >= top_p; >= 1 keeps all.
        top_k: keep the k most probable ids; 0 keeps all.
        presence_penalty: subtracted once from the logit of every id generated so far.
        frequency_penalty: subtracted per (decayed) occurrence of a generated id.
        penalty_decay: every step, occurrence counts are multiplied by this before the new id is added.
        banned_tokens: ids that are never sampled (their logits become -inf).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    penalty_decay: float = 0.996
    banned_tokens: tuple[int, ...] = ()

    def __post_init__(self):
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not self.top_p >= 0:
            raise ValueError(f"top_p must be >= 0, got {self.top_p}")
        if int(self.top_k) != self.top_k or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0, got {self.top_k}")
        if not 0 < self.penalty_decay <= 1:
            raise ValueError(f"penalty_decay must be in (0, 1], got {self.penalty_decay}")
        if any(int(t) != t or t < 0 for t in self.banned_tokens):
            raise ValueError(f"banned_tokens must be token ids >= 0, got {self.banned_tokens}")
        object.__setattr__(self, "top_k", int(self.top_k))
        object.__setattr__(self, "banned_tokens", tuple(int(t) for t in self.banned_tokens))


def _ban(logits: torch.Tensor, cfg: SamplerConfig) -> torch.Tensor:
    if not cfg.banned_tokens:
        return logits
    V = logits.shape[-1]
    if max(cfg.banned_tokens) >= V:
        raise ValueError(f"banned token {max(cfg.banned_tokens)} is outside the vocabulary of {V}")
    if len(set(cfg.banned_tokens)) == V:
        raise ValueError("every token is banned: nothing left to sample")
    banned = torch.tensor(cfg.banned_tokens, device=logits.device)
    return logits.index_fill(-1, banned, float("-inf"))


def sampling_probs(logits: torch.Tensor, cfg: SamplerConfig) -> torch.Tensor:
    """The distribution `sample_logits` draws from: banned ids, temperature, top-k and top-p applied.

    Args:
        logits: [B, V] raw scores (any float dtype).

    Returns:
        [B, V] float64 probabilities, zero outside the kept ids, each row summing to 1.
        At temperature 0 each row is one-hot at the argmax.
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must be [B, V], got shape {tuple(logits.shape)}")
    # fp64: the top_p cutoff compares cumulative sums, and fp32 sums of 65536 terms drift
    logits = _ban(logits.double(), cfg)
    if cfg.temperature == 0:
        return torch.zeros_like(logits).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
    probs = torch.softmax(logits / cfg.temperature, dim=-1)
    if cfg.top_k == 0 and cfg.top_p >= 1:
        return probs
    ranked, order = torch.sort(probs, dim=-1, descending=True, stable=True)  # ties: lower id first
    rank = torch.arange(probs.shape[-1], device=probs.device)
    keep = torch.ones_like(ranked, dtype=torch.bool)
    if cfg.top_k > 0:
        keep &= rank < cfg.top_k
    if cfg.top_p < 1:
        # rank r is needed while the mass of the ranks before it is still short of top_p
        mass_before = ranked.cumsum(-1) - ranked
        keep &= mass_before < cfg.top_p
        keep[:, 0] = True
    probs = torch.zeros_like(probs).scatter_(-1, order, ranked * keep)
    return probs / probs.sum(-1, keepdim=True)


def sample_logits(logits: torch.Tensor, cfg: SamplerConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample one id per row of `logits` [B, V]; returns [B] int64 on logits' device.

    A torch.Generator on logits' device makes the draw repeatable; None uses torch's global RNG.
    Temperature 0 is greedy and consumes no randomness.
    """
    if cfg.temperature == 0:
        if logits.ndim != 2:
            raise ValueError(f"logits must be [B, V], got shape {tuple(logits.shape)}")
        return _ban(logits, cfg).argmax(-1)
    probs = sampling_probs(logits, cfg)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class Penalties:
    """RWKV's presence and frequency penalties, with occurrence counts kept per batch row.

    For every id n generated so far in a row, `apply` subtracts
    presence_penalty + count[n] * frequency_penalty from logit n. `update` first multiplies all
    counts by penalty_decay, then adds 1 for each row's new id. Feed it generated ids only: the
    prompt is never penalised.

    Args:
        cfg: supplies presence_penalty, frequency_penalty and penalty_decay.
        batch_size, vocab_size: shape of the logits to penalise.
        device: where the [B, V] counts live (that of the logits).
        uncounted_ids: ids that get the presence penalty once seen but never accumulate a count.
            The official chat loop does this for tokens that decode to spaces, tabs or digits;
            the caller, who owns the tokenizer, decides which ids those are.
    """

    def __init__(self, cfg: SamplerConfig, batch_size: int, vocab_size: int, device=None, uncounted_ids=()):
        self.presence = cfg.presence_penalty
        self.frequency = cfg.frequency_penalty
        self.decay = cfg.penalty_decay
        self.counts = torch.zeros(batch_size, vocab_size, device=device)
        self.seen = torch.zeros(batch_size, vocab_size, dtype=torch.bool, device=device)
        self.increment = torch.ones(vocab_size, device=device)
        self.increment[list(uncounted_ids)] = 0.0

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """Return penalised logits [B, V] (a new tensor, in at least fp32)."""
        if logits.shape != self.counts.shape:
            raise ValueError(f"logits shape {tuple(logits.shape)} != penalties shape {tuple(self.counts.shape)}")
        return logits - (self.presence * self.seen + self.frequency * self.counts)

    def update(self, ids: torch.Tensor) -> None:
        """Record one newly generated id per row: ids [B] int64."""
        if ids.shape != (self.counts.shape[0],):
            raise ValueError(f"ids must have shape ({self.counts.shape[0]},), got {tuple(ids.shape)}")
        rows = torch.arange(ids.shape[0], device=ids.device)
        self.counts.mul_(self.decay)
        self.counts[rows, ids] += self.increment[ids]
        self.seen[rows, ids] = True

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
import secrets
from dataclasses import dataclass

import torch

from eaglefinch.kernels import to_device


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


def _check_banned(banned_tokens: tuple[int, ...], vocab_size: int) -> None:
    """Refuse banned ids outside the vocabulary, and bans that leave nothing to sample."""
    if banned_tokens and max(banned_tokens) >= vocab_size:
        raise ValueError(f"banned token {max(banned_tokens)} is outside the vocabulary of {vocab_size}")
    if len(set(banned_tokens)) == vocab_size:
        raise ValueError("every token is banned: nothing left to sample")


def _ban(logits: torch.Tensor, cfg: SamplerConfig) -> torch.Tensor:
    if not cfg.banned_tokens:
        return logits
    _check_banned(cfg.banned_tokens, logits.shape[-1])
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


# ---- batched sampling on the device: per-row settings, counter-based random numbers

SEED_LIMIT = 2**64 - 1  # seeds are 64-bit, as torch.manual_seed's


def random_seed() -> int:
    """A fresh 64-bit seed from the OS, for a generation given none (torch's global RNG is left alone)."""
    return secrets.randbits(64)


def _as_int64(value: int) -> int:
    """The int64 with the same 64 bits as the unsigned `value` (torch has no uint64 arithmetic)."""
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN = _as_int64(0x9E3779B97F4A7C15)  # splitmix64's state increment
_MIX1 = _as_int64(0xBF58476D1CE4E5B9)
_MIX2 = _as_int64(0x94D049BB133111EB)


def _shift_right(x: torch.Tensor, bits: int, out: torch.Tensor) -> torch.Tensor:
    """Logical right shift of int64 `x` into `out` (which may be `x`): torch's >> copies the sign bit
    in, so mask those copies off."""
    torch.bitwise_right_shift(x, bits, out=out)
    return out.bitwise_and_((1 << (64 - bits)) - 1)


def _mix64_(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's output function, in place on int64 `x` (products wrap): a bijection that spreads
    every input bit. In place with one scratch tensor, because on the CPU a fresh [n, V] temporary
    per operation costs more than the arithmetic."""
    scratch = torch.empty_like(x)
    x ^= _shift_right(x, 30, out=scratch)
    x *= _MIX1
    x ^= _shift_right(x, 27, out=scratch)
    x *= _MIX2
    x ^= _shift_right(x, 31, out=scratch)
    return x


def counter_uniforms(seeds: torch.Tensor, steps: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Uniform numbers in (0, 1) for each (seed, step, id), computed by hashing: no generator state.

    Row r's key is output number steps[r] + 1 of a splitmix64 generator started at seeds[r], and
    u[r, id] is output number id + 1 of one started at that key, its top 52 bits centred in their
    interval. The same on every device and for any batch the row is in.

    Args:
        seeds, steps: [n] int64 on one device (a seed >= 2**63 is given as the int64 of its bits).

    Returns:
        [n, vocab_size] float64 in [2**-53, 1 - 2**-53]: never 0 or 1, so -log(u) is finite and > 0.
    """
    keys = _mix64_(seeds + (steps + 1) * _GOLDEN)
    ids = torch.arange(1, vocab_size + 1, device=seeds.device)
    bits = _mix64_(keys[:, None] + ids * _GOLDEN)
    return _shift_right(bits, 12, out=bits).double().add_(0.5).mul_(2.0**-52)


def _require(ok: torch.Tensor, message: str) -> None:
    """Raise ValueError(message) unless every element of the bool tensor `ok` is true.

    Off the CPU, reading `ok` back would stall the stream and break CUDA-graph capture, so there the
    check is a device-side assert instead: a failure surfaces at a later synchronisation, and it ends
    the process's CUDA context.
    """
    if ok.device.type == "cpu":
        if not ok.all():
            raise ValueError(message)
    else:
        torch._assert_async(ok.all(), message)


class BatchSampler:
    """Sampling state of up to `max_rows` sequences (rows = engine slots) on one device.

    Each row has its own SamplerConfig, seed, step counter and penalty counts, stored in tensors of
    `max_rows` entries. `sample` draws one id for each of the given rows without a host round trip
    (so it can run in a CUDA graph), and its draw for a row depends only on that row's logits,
    settings, seed and step: never on which other rows are sampled with it. Each row follows the
    reference exactly: `Penalties.apply`, then `sampling_probs` (or greedy `sample_logits`) with its
    SamplerConfig. The random draw differs from the reference's `torch.multinomial`: it is an
    exponential race over `counter_uniforms(seed, step)`.

    Args:
        max_rows: number of rows (slots).
        vocab_size: width of the logits.
        device: where the state lives (that of the logits).
        uncounted_ids: ids that get the presence penalty but never a count (see `Penalties`).
    """

    def __init__(self, max_rows: int, vocab_size: int, device=None, uncounted_ids=()):
        if int(max_rows) != max_rows or max_rows < 1:
            raise ValueError(f"max_rows must be an integer >= 1, got {max_rows}")
        if int(vocab_size) != vocab_size or vocab_size < 1:
            raise ValueError(f"vocab_size must be an integer >= 1, got {vocab_size}")
        uncounted = sorted({int(i) for i in uncounted_ids})
        if uncounted and (uncounted[0] < 0 or uncounted[-1] >= vocab_size):
            bad = uncounted[0] if uncounted[0] < 0 else uncounted[-1]
            raise ValueError(f"uncounted id {bad} is outside the vocabulary of {vocab_size}")
        self.max_rows, self.vocab_size = int(max_rows), int(vocab_size)

        def per_row(value, dtype):
            return torch.full((self.max_rows,), value, dtype=dtype, device=device)

        # dtypes as the reference computes: fp64 for temperature and top_p, fp32 for the penalties
        self.temperature = per_row(1.0, torch.float64)
        self.top_p = per_row(1.0, torch.float64)
        self.top_k = per_row(0, torch.int64)
        self.presence = per_row(0.0, torch.float32)
        self.frequency = per_row(0.0, torch.float32)
        self.penalty_decay = per_row(1.0, torch.float32)
        self.seed = per_row(0, torch.int64)
        self.step = per_row(0, torch.int64)
        self.configured = per_row(False, torch.bool)
        self.counts = torch.zeros(self.max_rows, self.vocab_size, device=device)
        self.seen = torch.zeros(self.max_rows, self.vocab_size, dtype=torch.bool, device=device)
        self.banned = torch.zeros(self.max_rows, self.vocab_size, dtype=torch.bool, device=device)
        self.increment = torch.ones(self.vocab_size, device=device)
        self.increment[uncounted] = 0.0
        self.device = self.counts.device
        # host copies of the settings: the flags that pick the work in `sample` must not read the device
        self._configs: list[SamplerConfig | None] = [None] * self.max_rows
        self.any_truncating = self.any_greedy = self.any_sampling = self.any_penalty = self.any_banned = False

    def configure(self, row: int, cfg: SamplerConfig, seed: int) -> None:
        """Give `row` its settings and seed; resets its penalty counts and step counter."""
        if not isinstance(cfg, SamplerConfig):
            raise TypeError(f"cfg must be a SamplerConfig, got {type(cfg).__name__}")
        if int(row) != row or not 0 <= row < self.max_rows:
            raise ValueError(f"row must be an integer in [0, {self.max_rows}), got {row}")
        if int(seed) != seed or not 0 <= seed <= SEED_LIMIT:
            raise ValueError(f"seed must be an integer in [0, 2**64 - 1], got {seed}")
        _check_banned(cfg.banned_tokens, self.vocab_size)
        row = int(row)
        # fill_ hands the value to the kernel as an argument; `tensor[row] = value` would copy a host
        # scalar to the device, which waits for everything queued there (a decode step in flight)
        for tensor, value in ((self.temperature, cfg.temperature), (self.top_p, cfg.top_p), (self.top_k, cfg.top_k),
                              (self.presence, cfg.presence_penalty), (self.frequency, cfg.frequency_penalty),
                              (self.penalty_decay, cfg.penalty_decay), (self.seed, _as_int64(int(seed))),
                              (self.step, 0), (self.configured, True)):
            tensor[row].fill_(value)
        self.counts[row] = 0.0
        self.seen[row] = False
        self.banned[row] = False
        if cfg.banned_tokens:
            self.banned[row].index_fill_(0, to_device(cfg.banned_tokens, self.device, torch.long), True)
        self._configs[row] = cfg
        configs = [c for c in self._configs if c is not None]
        self.any_truncating = any(c.top_k > 0 or c.top_p < 1 for c in configs)
        self.any_greedy = any(c.temperature == 0 for c in configs)
        self.any_sampling = any(c.temperature > 0 for c in configs)
        # without penalties the counts change nothing (x - 0 * count = x): not kept, one pass less
        self.any_penalty = any(c.presence_penalty != 0 or c.frequency_penalty != 0 for c in configs)
        self.any_banned = any(len(c.banned_tokens) > 0 for c in configs)

    def sample(self, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Draw one id for each of `rows` and record it (penalty counts, step += 1).

        Args:
            logits: [n, V] (any float dtype, on the sampler's device).
            rows: [n] int64 distinct row indices, configured.

        Returns:
            ids [n] int64. A greedy row (temperature 0) takes the argmax of its penalised logits,
            lowest id among ties, and consumes no randomness (its step still advances).
        """
        scores = self._scores(logits, rows)
        if self.any_sampling:
            weights = self._sampling_weights(scores, rows)
            # exponential race: with E_i = -log(u_i) ~ Exp(1), argmax w_i / E_i is id i with probability w_i / sum(w)
            exponentials = counter_uniforms(self.seed[rows], self.step[rows], self.vocab_size).log_().neg_()
            ids = weights.div_(exponentials).argmax(-1)
            if self.any_greedy:
                ids = torch.where(self.temperature[rows] == 0, scores.argmax(-1), ids)
        else:
            ids = scores.argmax(-1)
        self._record(rows, ids)
        return ids

    def probs(self, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """[n, V] float64: the distribution `sample` would draw from (penalties applied, counts not updated).

        Row by row equal to `sampling_probs(Penalties.apply(...), cfg)` of the reference.
        """
        scores = self._scores(logits, rows)
        greedy = torch.zeros_like(scores).scatter_(-1, scores.argmax(-1, keepdim=True), 1.0)
        if not self.any_sampling:
            return greedy
        weights = self._sampling_weights(scores, rows)
        # the reference renormalises only rows it truncates; the others are softmax as it is
        truncates = ((self.top_k[rows] > 0) | (self.top_p[rows] < 1))[:, None]
        probs = torch.where(truncates, weights / weights.sum(-1, keepdim=True), weights)
        return torch.where((self.temperature[rows] == 0)[:, None], greedy, probs)

    def _scores(self, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Check the arguments; return each row's penalised logits in fp64, banned ids at -inf."""
        V = self.vocab_size
        if logits.ndim != 2 or logits.shape[1] != V:
            raise ValueError(f"logits must be [n, {V}], got shape {tuple(logits.shape)}")
        if not logits.is_floating_point():
            raise ValueError(f"logits must be floating point, got {logits.dtype}")
        if rows.ndim != 1 or rows.dtype != torch.int64:
            raise ValueError(f"rows must be a 1-D int64 tensor, got {rows.dtype} of shape {tuple(rows.shape)}")
        if rows.shape[0] != logits.shape[0]:
            raise ValueError(f"logits {list(logits.shape)} and rows [{rows.shape[0]}] must have the same length")
        if logits.device != self.device or rows.device != self.device:
            raise ValueError(f"logits ({logits.device}) and rows ({rows.device}) must be on the sampler's device, {self.device}")
        _require((rows >= 0) & (rows < self.max_rows), f"rows must be in [0, {self.max_rows})")
        ordered = rows.sort().values
        _require(ordered[1:] != ordered[:-1], "rows must be distinct")
        _require(self.configured[rows], "a row is not configured: call configure(row, cfg, seed) first")
        # Penalties.apply's products and sum in its dtypes (bit for bit: IEEE + and * commute),
        # in place on fresh tensors to spare [n, V] temporaries
        if self.any_penalty:
            penalties = self.counts[rows].mul_(self.frequency[rows, None]).add_(self.presence[rows, None] * self.seen[rows])
            scores = (logits - penalties).double()
        else:
            scores = logits.to(torch.float64, copy=True)
        return scores.masked_fill_(self.banned[rows], float("-inf")) if self.any_banned else scores

    def _sampling_weights(self, scores: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """softmax(scores / T) with each row's top-k / top-p prefix kept and the rest zeroed, unnormalised.

        These are `sampling_probs`'s numbers before its final renormalisation, which the draw does
        not need. Greedy rows get meaningless weights (they divide by 1).
        """
        temperature = self.temperature[rows, None]
        probs = torch.softmax(scores / torch.where(temperature > 0, temperature, 1.0), dim=-1)
        if not self.any_truncating:
            return probs
        ranked, order = torch.sort(probs, dim=-1, descending=True, stable=True)  # ties: lower id first
        rank = torch.arange(self.vocab_size, device=self.device)
        top_k, top_p = self.top_k[rows, None], self.top_p[rows, None]
        keep = (top_k == 0) | (rank < top_k)
        # as the reference: rank r is needed while the mass before it is short of top_p; rank 0 always
        mass_before = ranked.cumsum(-1) - ranked
        keep &= (top_p >= 1) | (mass_before < top_p) | (rank == 0)
        return torch.zeros_like(probs).scatter_(-1, order, ranked * keep)

    def _record(self, rows: torch.Tensor, ids: torch.Tensor) -> None:
        """Count each row's new id as Penalties.update does, and advance the rows' steps."""
        if self.any_penalty:
            counts = self.counts[rows] * self.penalty_decay[rows, None]
            counts.scatter_add_(-1, ids[:, None], self.increment[ids][:, None])
            self.counts.index_copy_(0, rows, counts)
            self.seen.index_put_((rows, ids), torch.ones_like(ids, dtype=torch.bool))
        self.step.index_add_(0, rows, torch.ones_like(rows))

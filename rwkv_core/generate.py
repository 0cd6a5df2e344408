"""The generation loop shared by every domain: prompts in, sampled token ids out, on the engine.

Works on token ids only; stop strings and decoding belong to the domain (see text/generate.py).
"""
import weakref

import torch

from .engine import Engine
from .sampling import BatchSampler, SamplerConfig, random_seed
from .state import RWKVState

_shared_engines = weakref.WeakKeyDictionary()  # model -> (Engine, the weights it was made for)


def _weights_signature(model):
    return tuple((p.data_ptr(), p.dtype, p.device) for p in model.parameters())


def engine_for(model, n: int) -> Engine:
    """An engine of `model` with at least n free slots: the model's shared one (made once, and made
    again when the weights move or change dtype, or when it is too small), or a new one while the
    shared one is busy."""
    entry = _shared_engines.get(model)
    signature = _weights_signature(model)
    if entry is not None and entry[1] == signature and entry[0].free_slots >= n:
        return entry[0]
    if entry is not None and entry[1] == signature and entry[0].free_slots < entry[0].max_batch:
        return Engine(model, max_batch=n)  # the shared one is in use: this one is private
    engine = Engine(model, max_batch=max(n, entry[0].max_batch if entry else 1))
    _shared_engines[model] = (engine, signature)
    return engine


class Generation:
    """Sample up to `max_new_tokens` for a batch of prompts; iterate to get each step's tokens.

    Each step yields a list with one entry per sequence: the new token id, or None once that
    sequence has finished (it sampled one of `stop_ids`, or the caller called `finish(row)`).
    Every sampled token, the stopping one included, is fed to the model, so `state` (after
    iteration) continues each sequence right after its last token: a chat turn can go on from it.
    `tokens[row]` holds what each sequence generated, the stop id excluded.

    sampler: one SamplerConfig for every sequence, or a list of one per sequence.
    seed: an int (sequence `row` samples with seed + row, so a prompt samples the same alone with
    seed s as at row i of a batch with seed s - i), a list of one seed per sequence, or None
    (random). Sequences never affect each other's samples.
    `embeds` [B, T, C] gives the prompts as input embeddings instead of ids (`prompts` is then None;
    a visual model's text with the image tokens spliced in), with the model's `reverse_span` (see
    `Engine.prefill_embeds`). `progress` shows a bar while long prompts are read. `engine` runs it
    (default: the model's shared engine).
    """

    def __init__(self, model, prompts, max_new_tokens, sampler=SamplerConfig(), *, state=None,
                 stop_ids=(), seed=None, uncounted_ids=(), embeds=None, reverse_span=None, progress=False,
                 engine=None):
        self.max_new_tokens = max_new_tokens
        self.stop_ids = set(stop_ids)
        if (prompts is None) == (embeds is None):
            raise ValueError("give the prompts as token ids or as embeds, one of the two")
        B = len(prompts) if embeds is None else embeds.shape[0]
        if B == 0:
            raise ValueError("no prompts given")
        if state is not None and state.batch_size != B:
            raise ValueError(f"state is for {state.batch_size} sequences, got {B} prompts")
        self.engine = engine or engine_for(model, B)
        self.slots = self.engine.allocate(B, state)
        self._state = None
        try:
            if embeds is None:
                self.logits = self.engine.prefill(self.slots, prompts, progress)
            else:
                self.logits = self.engine.prefill_embeds(self.slots, embeds, reverse_span)
        except BaseException:
            self._release()
            raise
        self.tokens = [[] for _ in range(B)]
        self.finished = [False] * B
        samplers = list(sampler) if isinstance(sampler, (list, tuple)) else [sampler] * B
        seeds = list(seed) if isinstance(seed, (list, tuple)) else [
            (random_seed() if seed is None else seed) + row for row in range(B)]
        if len(samplers) != B or len(seeds) != B:
            raise ValueError(f"give one sampler and one seed per sequence ({B}), or one for all")
        self.sampler = BatchSampler(B, self.logits.shape[-1], device=self.engine.device, uncounted_ids=uncounted_ids)
        for row in range(B):
            self.sampler.configure(row, samplers[row], seeds[row] % 2 ** 64)

    def finish(self, row):
        """Stop sequence `row` here (its state is kept as it is now)."""
        self.finished[row] = True

    @property
    def state(self) -> RWKVState:
        """The state of every sequence: after its last token (its stop id included) once finished."""
        return self._state if self._state is not None else self.engine.read_state(self.slots)

    def __del__(self):  # a generation dropped before its end gives its slots back
        try:
            self._release()
        except Exception:
            pass

    def _release(self):
        if self._state is None:
            self._state = self.engine.read_state(self.slots)
            self.engine.release(self.slots)

    @torch.no_grad()
    def __iter__(self):
        active = [row for row in range(len(self.tokens)) if not self.finished[row]]
        logits = self.logits
        try:
            for _ in range(self.max_new_tokens):
                if not active:
                    break
                rows = torch.tensor(active, device=self.engine.device)
                ids = self.sampler.sample(logits, rows)
                logits = self.engine.decode([self.slots[r] for r in active], ids)
                step = [None] * len(self.tokens)
                for row, token in zip(active, ids.tolist()):
                    if token in self.stop_ids:
                        self.finish(row)
                    else:
                        self.tokens[row].append(token)
                        step[row] = token
                yield step
                keep = [j for j, row in enumerate(active) if not self.finished[row]]  # finish() may run in the yield
                if len(keep) < len(active):
                    active = [active[j] for j in keep]
                    logits = logits[keep]
        finally:
            self._release()

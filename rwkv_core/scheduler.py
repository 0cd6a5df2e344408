"""Continuous batching: one thread runs the engine for requests that come and go at any time.

    scheduler = Scheduler(model, max_batch=16)
    request = scheduler.submit(prompt_ids, max_tokens=100, sampler=SamplerConfig(), seed=0,
                               on_token=lambda token, finish_reason: ...)
    request.cancel()            # from any thread: it leaves the batch at the next step
    scheduler.close()

Between two decode steps, waiting requests join the batch (their prompts are prefilled together,
packed) and finished or cancelled ones leave, so a request never waits for the others to end. It
knows token ids only; text, stop strings and HTTP belong to the server (`eaglefinch.serve`).
`on_token(token, None)` is called from the scheduler's thread for every generated token, then
`on_token(None, reason)` once, with reason "stop" (a stop id was sampled: it is not passed on),
"length" (max_tokens), "cancelled" or "error".
"""
import dataclasses
import queue
import threading
from typing import Callable

import torch

from .engine import Engine
from .sampling import BatchSampler, SamplerConfig


@dataclasses.dataclass(eq=False)
class Request:
    prompt: list[int]
    max_tokens: int
    sampler: SamplerConfig
    seed: int
    on_token: Callable
    stop_ids: frozenset = frozenset({0})
    generated: int = 0
    cancelled: bool = False

    def cancel(self):
        """Stop this request at the next step (safe from any thread)."""
        self.cancelled = True


class Scheduler:
    """Runs `Engine(model, max_batch)` in a background thread for requests submitted from any thread."""

    def __init__(self, model, max_batch: int = 16, **engine_args):
        self.engine = Engine(model, max_batch=max_batch, **engine_args)
        V, device = model.cfg.vocab_size, self.engine.device
        self.sampler = BatchSampler(max_batch, V, device=device)
        self.next_logits = torch.zeros(max_batch, V, device=device)   # of each slot in use
        self.waiting: queue.Queue[Request] = queue.Queue()
        self.active: dict[int, Request] = {}   # slot -> request
        self.tokens_generated = 0
        self._wake = threading.Event()
        self._closing = False
        self.error = None
        self._thread = threading.Thread(target=self._run, name="eaglefinch-scheduler", daemon=True)
        self._thread.start()

    def submit(self, prompt, max_tokens, sampler, seed, on_token, stop_ids=(0,)) -> Request:
        if self._closing:
            raise RuntimeError("the scheduler is closed")
        if not prompt:
            raise ValueError("every prompt needs at least one token")
        request = Request(list(prompt), int(max_tokens), sampler, int(seed), on_token, frozenset(stop_ids))
        self.waiting.put(request)
        self._wake.set()
        return request

    @property
    def queue_length(self) -> int:
        return self.waiting.qsize()

    def close(self, timeout=None):
        """Cancel what is waiting or running and stop the thread."""
        self._closing = True
        self._wake.set()
        self._thread.join(timeout)

    # ---- the scheduler thread -----------------------------------------------------------------
    def _run(self):
        try:
            while not self._closing:
                self._admit()
                if not self.active:
                    self._wake.wait(0.05)
                    self._wake.clear()
                    continue
                self._step()
        except BaseException as e:   # a failing step ends every request with "error", never silently
            self.error = e
        finally:
            for slot in list(self.active):
                self._finish(slot, "error" if self.error else "cancelled")
            while not self.waiting.empty():
                self._tell(self.waiting.get_nowait(), None, "error" if self.error else "cancelled")

    def _admit(self):
        joining = []
        while len(joining) < self.engine.free_slots and not self.waiting.empty():
            request = self.waiting.get_nowait()
            if request.cancelled:
                self._tell(request, None, "cancelled")
            else:
                joining.append(request)
        if not joining:
            return
        slots = self.engine.allocate(len(joining))
        try:
            logits = self.engine.prefill(slots, [r.prompt for r in joining])
        except Exception:   # a prompt the model cannot read fails its requests, not the scheduler
            self.engine.release(slots)
            for request in joining:
                self._tell(request, None, "error")
            return
        for slot, request, row in zip(slots, joining, logits):
            self.sampler.configure(slot, request.sampler, request.seed)
            self.next_logits[slot] = row
            self.active[slot] = request
            if request.max_tokens <= 0:
                self._finish(slot, "length")

    def _step(self):
        slots = list(self.active)
        rows = torch.tensor(slots, device=self.engine.device)
        ids = self.sampler.sample(self.next_logits[rows], rows)
        going_on = []
        for slot, token in zip(slots, ids.tolist()):
            request = self.active[slot]
            if request.cancelled:
                self._finish(slot, "cancelled")
            elif token in request.stop_ids:
                self._finish(slot, "stop")
            else:
                request.generated += 1
                self.tokens_generated += 1
                self._tell(request, token, None)
                if request.generated >= request.max_tokens:
                    self._finish(slot, "length")
                elif request.cancelled:
                    self._finish(slot, "cancelled")
                else:
                    going_on.append((slot, token))
        if going_on:
            keep = [slot for slot, _ in going_on]
            logits = self.engine.decode(keep, [token for _, token in going_on])
            self.next_logits[torch.tensor(keep, device=self.engine.device)] = logits

    def _finish(self, slot, reason):
        request = self.active.pop(slot)
        self.engine.release([slot])
        self._tell(request, None, reason)

    @staticmethod
    def _tell(request, token, reason):
        """Call the request's callback; one that fails (its client is gone) cancels only that request."""
        try:
            request.on_token(token, reason)
        except Exception:
            request.cancelled = True

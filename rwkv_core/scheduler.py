"""Continuous batching: one thread runs the engine for requests that come and go at any time.

    scheduler = Scheduler(model, max_batch=16, cache_mb=512)
    request = scheduler.submit(prompt_ids, max_tokens=100, sampler=SamplerConfig(), seed=0,
                               on_token=lambda token, finish_reason: ...)
    request.cancel()            # from any thread: it leaves the batch at the next step
    scheduler.close()

Each turn of the scheduler's loop admits waiting requests into free slots, runs one prefill forward
(at most `prefill_chunk` prompt tokens, packed across the requests being read) and then one decode
step of every running sequence. A long prompt is therefore read a chunk per step while the other
streams go on, a request never waits for the others to end, and finished or cancelled ones leave
at the next step.

A prompt is a list of segments (message boundaries: token-id lists, or `ImageSegment`s for the
embeddings of an image). The state after every segment is kept in an `LRUCache` (bounded in
bytes), keyed by a digest of the segments so far and of the initial state; a request whose first
segments are cached starts from their state and reads only the rest. A prefill forward never
crosses a segment boundary, so a cached state is exactly the state the prefill would reach.

It knows token ids only; text, stop strings and HTTP belong to the server (`eaglefinch.serve`).
`on_token(token, None)` is called from the scheduler's thread for every generated token, then
`on_token(None, reason)` once, with reason "stop" (a stop id was sampled: it is not passed on),
"length" (max_tokens), "cancelled" or "error".
"""
import collections
import dataclasses
import hashlib
import queue
import threading
from typing import Callable

import torch

from eaglefinch.kernels import to_device

from .engine import Engine
from .sampling import BatchSampler, SamplerConfig
from .state import RWKVState


@dataclasses.dataclass(frozen=True, eq=False)
class ImageSegment:
    """An image in a prompt: its pixels (read by the scheduler's `read_image` when the prefix up to
    it is not cached), the number of positions it takes, and a digest of its content (the cache key)."""
    pixels: torch.Tensor
    length: int
    digest: str

    def __len__(self):
        return self.length


def segment_digests(segments, start: str = "") -> list[str]:
    """The cache key after each segment: a chain of SHA-256 digests over the segments' contents."""
    keys, key = [], hashlib.sha256(start.encode()).hexdigest()
    for segment in segments:
        h = hashlib.sha256(key.encode())
        if isinstance(segment, ImageSegment):
            h.update(b"image:" + segment.digest.encode())
        else:
            h.update(b"ids:" + ",".join(map(str, segment)).encode())
        key = h.hexdigest()
        keys.append(key)
    return keys


def tensor_bytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class LRUCache:
    """Values by key, least recently used first out, within `max_bytes` (the caller gives each
    value's size). The scheduler's states after prompt prefixes, and a visual model's image
    features (`VisualRWKV.cached_image_embeds`). `hits` and `misses` are counted by the user."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.entries: collections.OrderedDict[str, tuple[object, int]] = collections.OrderedDict()
        self.bytes = 0
        self.hits = self.misses = 0

    def get(self, key):
        """The value, or None; a hit becomes the most recently used."""
        entry = self.entries.get(key)
        if entry is None:
            return None
        self.entries.move_to_end(key)
        return entry[0]

    def put(self, key, value, size: int) -> None:
        if size > self.max_bytes or key in self.entries:
            return
        while self.bytes + size > self.max_bytes:
            self.bytes -= self.entries.popitem(last=False)[1][1]
        self.entries[key] = (value, size)
        self.bytes += size


@dataclasses.dataclass(eq=False)
class Request:
    prompt_tokens: int
    max_tokens: int
    sampler: SamplerConfig
    seed: int
    on_token: Callable
    stop_ids: frozenset = frozenset({0})
    generated: int = 0
    cached_tokens: int = 0   # prompt positions read from the prefix cache instead of computed
    cancelled: bool = False

    def cancel(self):
        """Stop this request at the next step (safe from any thread)."""
        self.cancelled = True


@dataclasses.dataclass(eq=False)
class _Group:
    """Requests with one prompt (n > 1 forks one prefill), and where the reading of it stands."""
    requests: list
    segments: list
    keys: list
    initial: RWKVState | None
    slots: list = None
    segment: int = 0     # the segment being read
    offset: int = 0      # positions of it read

    @property
    def cancelled(self):
        return all(r.cancelled for r in self.requests)


class Scheduler:
    """Runs `Engine(model, max_batch)` in a background thread for requests submitted from any thread.

    cache_mb: memory for the prefix cache (0: off). prefill_chunk: prompt positions read per step
    (default: the engine's prefill_tokens). read_image(pixels) -> (embeds [T, C], reverse span or
    None): how ImageSegments become inputs (a visual model's encoder and projector). after_step():
    called on the scheduler's thread after each turn of its loop (a server hands the turn's tokens
    to its event loop at once there, instead of waking it for every token).
    """

    def __init__(self, model, max_batch: int = 16, *, cache_mb: float = 0, prefill_chunk=None,
                 read_image=None, after_step=None, **engine_args):
        self.engine = Engine(model, max_batch=max_batch, **engine_args)
        V, device = model.cfg.vocab_size, self.engine.device
        self.sampler = BatchSampler(max_batch, V, device=device)
        self.next_logits = torch.zeros(max_batch, V, device=device)   # of each slot in use
        self.cache = LRUCache(int(cache_mb * 2 ** 20))   # key -> (state, logits after it)
        self.prefill_chunk = prefill_chunk or self.engine.prefill_tokens
        self.read_image = read_image
        self.after_step = after_step or (lambda: None)
        self.waiting: queue.Queue[_Group] = queue.Queue()
        self.reading: list[_Group] = []       # admitted, prompt being read
        self.active: dict[int, Request] = {}  # slot -> request being decoded
        self.tokens_generated = 0
        self.prompt_tokens_computed = 0       # prompt positions run through the model
        self.cached_tokens = 0                # prompt positions read from the cache instead
        self._pinned_ids = None               # the sampled ids' landing place on the host (CUDA)
        self._wake = threading.Event()
        self._closing = False
        self.error = None
        self._thread = threading.Thread(target=self._run, name="eaglefinch-scheduler", daemon=True)
        self._thread.start()

    def submit(self, prompt, max_tokens, sampler, seed, on_token, stop_ids=(0,), **options) -> Request:
        """One request; see `submit_group` for the arguments."""
        return self.submit_group(prompt, max_tokens, sampler, [seed], [on_token], stop_ids, **options)[0]

    def submit_group(self, prompt, max_tokens, sampler, seeds, on_tokens, stop_ids=(0,), *, initial_state=None,
                     initial_key="") -> list[Request]:
        """len(seeds) requests that continue one prompt, which is read once.

        prompt: token ids, or a list of segments (token-id lists and ImageSegments) at whose ends
        states are cached. initial_state: an RWKVState of one sequence to start from instead of the
        model's initial state, and initial_key a name for it that is part of every cache key."""
        if self._closing:
            raise RuntimeError("the scheduler is closed")
        segments = [prompt] if prompt and isinstance(prompt[0], int) else [s for s in prompt if len(s)]
        if not segments or not len(segments[0]):
            raise ValueError("every prompt needs at least one token")
        if len(seeds) > self.engine.max_batch:
            raise ValueError(f"{len(seeds)} sequences at once, but the scheduler holds {self.engine.max_batch}")
        if initial_state is not None and not initial_key:
            raise ValueError("an initial_state needs an initial_key (a name for it in the cache keys)")
        if any(isinstance(s, ImageSegment) for s in segments) and self.read_image is None:
            raise ValueError("this scheduler's model reads no images")
        total = sum(len(s) for s in segments)
        requests = [Request(total, int(max_tokens), sampler, int(seed), on_token, frozenset(stop_ids))
                    for seed, on_token in zip(seeds, on_tokens)]
        self.waiting.put(_Group(requests, [s if isinstance(s, ImageSegment) else list(s) for s in segments],
                                segment_digests(segments, initial_key), initial_state))
        self._wake.set()
        return requests

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
                if self.reading:
                    self._read_prompts()
                if self.active:
                    self._step()
                self.after_step()
                if not self.active and not self.reading:
                    self._wake.wait(0.05)
                    self._wake.clear()
        except BaseException as e:   # a failing step ends every request with "error", never silently
            self.error = e
        finally:
            reason = "error" if self.error else "cancelled"
            for slot in list(self.active):
                self._finish(slot, reason)
            for group in self.reading:
                self._fail(group, reason)
            while not self.waiting.empty():
                self._fail(self.waiting.get_nowait(), reason)
            self.after_step()

    def _admit(self):
        """Waiting groups into free slots, starting from the longest cached prefix of their prompt."""
        while not self.waiting.empty() and self.engine.free_slots >= len(self.waiting.queue[0].requests):
            group = self.waiting.get_nowait()
            if group.cancelled:
                self._fail(group, "cancelled")
                continue
            n = len(group.requests)   # every fork's slot now; the prompt is read into the first
            group.slots = self.engine.allocate(n, None if group.initial is None else RWKVState.cat([group.initial] * n))
            k, hit = self._longest_cached_prefix(group)
            if hit is None:
                self.cache.misses += 1
            else:
                self.cache.hits += 1
                self.engine.write_state(group.slots[:1], hit[0])
                group.segment = k
                for request in group.requests:
                    request.cached_tokens = sum(len(s) for s in group.segments[:k])
                self.cached_tokens += group.requests[0].cached_tokens
            if k == len(group.segments):
                self._start(group, hit[1])
            else:
                self.reading.append(group)

    def _longest_cached_prefix(self, group):
        """(k, (state, logits)) of the longest prefix of k segments in the cache, or (0, None)."""
        for k in range(len(group.segments), 0, -1):
            hit = self.cache.get(group.keys[k - 1])
            if hit is not None:
                return k, hit
        return 0, None

    def _read_prompts(self):
        """One prefill forward: the next pieces of the prompts being read, never past a segment's end."""
        for group in [g for g in self.reading if g.cancelled]:
            self.reading.remove(group)
            self._fail(group, "cancelled")
        budget, groups, pieces = self.prefill_chunk, [], []
        for group in self.reading:
            segment = group.segments[group.segment]
            if isinstance(segment, ImageSegment):   # an image is read alone, whole (its span is scanned both ways)
                if not pieces:
                    self._read_image(group, segment)
                    return
                continue
            piece = segment[group.offset:group.offset + budget]
            if piece:
                groups.append(group)
                pieces.append(piece)
                budget -= len(piece)
            if budget <= 0:
                break
        if not pieces:
            return
        try:
            logits = self.engine.prefill([g.slots[0] for g in groups], pieces)
        except Exception:   # a prompt the model cannot read fails its requests, not the scheduler
            for group in groups:
                self.reading.remove(group)
                self._fail(group, "error")
            return
        for group, piece, row in zip(groups, pieces, logits):
            self._advance(group, len(piece), row)

    def _read_image(self, group, segment):
        try:
            embeds, reverse_span = self.read_image(segment.pixels)
            logits = self.engine.prefill_embeds(group.slots[:1], embeds[None], reverse_span)[0]
        except Exception:
            self.reading.remove(group)
            self._fail(group, "error")
            return
        self._advance(group, len(segment), logits)

    def _advance(self, group, n, logits):
        """`n` more positions of the group's prompt read; at a segment's end its state is cached."""
        self.prompt_tokens_computed += n
        group.offset += n
        if group.offset < len(group.segments[group.segment]):
            return
        group.segment, group.offset = group.segment + 1, 0
        if self.cache.max_bytes:
            state = self.engine.read_state(group.slots[:1])
            self.cache.put(group.keys[group.segment - 1], (state, logits.clone()), tensor_bytes(*state.tensors, logits))
        if group.segment == len(group.segments):
            self.reading.remove(group)
            self._start(group, logits)

    def _start(self, group, logits):
        """The prompt is read: each request of the group decodes from its own copy of the state."""
        if len(group.slots) > 1:
            state = self.engine.read_state(group.slots[:1])
            self.engine.write_state(group.slots[1:], RWKVState.cat([state] * (len(group.slots) - 1)))
        for slot, request in zip(group.slots, group.requests):
            self.sampler.configure(slot, request.sampler, request.seed)
            self.next_logits[slot] = logits
            self.active[slot] = request
            if request.max_tokens <= 0:
                self._finish(slot, "length")

    def _step(self):
        """Sample a token for every running sequence and start the next decode step with those
        tokens still on the device; only the sampled ids are waited for. The host's work on them
        (stops, callbacks, the server's streams) then overlaps the device's decode step, and a host
        that is late (another thread holding the GIL) finds that step already queued. A sequence
        that ends at this token wastes its share of the step: its slot is released after it."""
        slots = list(self.active)
        rows = to_device(slots, self.engine.device)   # no sync: the last step may still run
        ids = self.sampler.sample(self.next_logits[rows], rows)
        read_ids = self._ids_to_host(ids)
        self.next_logits[rows] = self.engine.decode(slots, ids)
        told, ended = [], []
        for slot, token in zip(slots, read_ids()):
            request = self.active[slot]
            if request.cancelled:
                self._finish(slot, "cancelled")
            elif token in request.stop_ids:
                self._finish(slot, "stop")
            else:
                request.generated += 1
                told.append((request, token))
                if request.generated >= request.max_tokens:
                    ended.append(slot)
        self.tokens_generated += len(told)
        for request, token in told:
            self._tell(request, token, None)
        for slot in ended:
            self._finish(slot, "length")
        # a request cancelled by now leaves at the next step (its extra token is never told)

    def _ids_to_host(self, ids):
        """A function that returns `ids` as a list, waiting only for the device work queued so far,
        not for what is queued after this call (a copy into pinned memory and a CUDA event)."""
        if ids.device.type != "cuda":
            values = ids.tolist()
            return lambda: values
        if self._pinned_ids is None:
            self._pinned_ids = torch.empty(self.engine.max_batch, dtype=torch.long, pin_memory=True)
        host = self._pinned_ids[:len(ids)]
        host.copy_(ids, non_blocking=True)
        copied = torch.cuda.Event()
        copied.record()

        def read():
            copied.synchronize()
            return host.tolist()
        return read

    def _finish(self, slot, reason):
        request = self.active.pop(slot)
        self.engine.release([slot])
        self._tell(request, None, reason)

    def _fail(self, group, reason):
        if group.slots is not None:   # admitted: its slots go back
            self.engine.release(group.slots)
        for request in group.requests:
            self._tell(request, None, reason)

    @staticmethod
    def _tell(request, token, reason):
        """Call the request's callback; one that fails (its client is gone) cancels only that request."""
        try:
            request.on_token(token, reason)
        except Exception:
            request.cancelled = True

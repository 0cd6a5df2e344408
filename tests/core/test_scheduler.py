"""The continuous-batching scheduler against the plain model token by token: requests submitted while
others run get the plain model's greedy tokens; cancelling frees the slot; a request that fails (a
prompt the model cannot read, a callback that raises) ends alone and the scheduler goes on."""
import threading
import time

import torch

from eaglefinch.rwkv_core.sampling import SamplerConfig
from eaglefinch.rwkv_core.scheduler import Scheduler

from .test_engine import reference_greedy
from .test_model import random_model

GREEDY = SamplerConfig(temperature=0.0)


class Collector:
    """on_token for one request: its tokens, and its finish reason once it ends."""

    def __init__(self):
        self.tokens, self.reason, self.done = [], None, threading.Event()

    def __call__(self, token, reason):
        if reason is None:
            self.tokens.append(token)
        else:
            self.reason = reason
            self.done.set()


def wait_until(condition, seconds=30):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_requests_joining_a_running_batch_get_the_plain_models_greedy_tokens():
    model = random_model("finch", seed=3)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1, model.cfg.vocab_size, (n,), generator=g).tolist() for n in (4, 9, 1, 17, 6)]
    lengths = [40, 25, 60, 10, 33]
    scheduler = Scheduler(model, max_batch=3)   # fewer slots than requests: some wait for a free one
    try:
        collectors = []
        for prompt, n in zip(prompts, lengths):
            collectors.append(Collector())
            scheduler.submit(prompt, n, GREEDY, seed=0, on_token=collectors[-1], stop_ids=())
            time.sleep(0.01)   # they arrive while the first ones are decoding
        for c in collectors:
            assert c.done.wait(60)
        for prompt, n, c in zip(prompts, lengths, collectors):
            assert c.reason == "length"
            assert c.tokens == reference_greedy(model, prompt, n)[0]
    finally:
        scheduler.close()


def test_cancel_frees_the_slot_and_failures_end_only_their_request():
    model = random_model("eagle", seed=4)
    scheduler = Scheduler(model, max_batch=2)
    try:
        long = Collector()
        request = scheduler.submit([1, 2, 3], 10 ** 6, GREEDY, seed=0, on_token=long)
        wait_until(lambda: len(long.tokens) > 3)
        request.cancel()
        assert long.done.wait(30) and long.reason == "cancelled"
        wait_until(lambda: scheduler.engine.free_slots == 2)

        unreadable = Collector()   # a token id beyond the vocabulary: prefill fails
        scheduler.submit([model.cfg.vocab_size + 5], 5, GREEDY, seed=0, on_token=unreadable)
        assert unreadable.done.wait(30) and unreadable.reason == "error"

        def broken(token, reason):
            raise RuntimeError("the client went away")
        scheduler.submit([4, 5], 10 ** 6, GREEDY, seed=0, on_token=broken)
        fine = Collector()
        scheduler.submit([4, 5], 8, GREEDY, seed=0, on_token=fine, stop_ids=())
        assert fine.done.wait(30) and fine.reason == "length" and len(fine.tokens) == 8
        wait_until(lambda: scheduler.engine.free_slots == 2)   # the broken one was cancelled too
        assert scheduler.error is None
    finally:
        scheduler.close()


def run_one(scheduler, prompt, n, **options):
    """Submit and wait: (tokens, finish reason, the request)."""
    c = Collector()
    request = scheduler.submit(prompt, n, GREEDY, seed=0, on_token=c, stop_ids=(), **options)
    assert c.done.wait(60)
    return c.tokens, c.reason, request


def test_prefix_cache_reads_only_new_segments_and_changes_no_output():
    model = random_model("finch", seed=5)
    g = torch.Generator().manual_seed(1)
    system, turn, other, last = (torch.randint(1, model.cfg.vocab_size, (n,), generator=g).tolist() for n in (30, 7, 9, 3))
    scheduler = Scheduler(model, max_batch=2, cache_mb=1, prefill_chunk=16)  # segments longer than a chunk too
    try:
        cases = [([system, turn, last], 0),                        # nothing cached yet
                 ([system, other, last], len(system)),             # the system prompt's state
                 ([system, turn, last], len(system + turn + last)),   # all of it, and its logits
                 ([system, turn], len(system + turn))]             # a prefix the first one cached
        for segments, cached in cases:
            before = scheduler.prompt_tokens_computed
            tokens, reason, request = run_one(scheduler, segments, 12)
            flat = [t for s in segments for t in s]
            assert tokens == reference_greedy(model, flat, 12)[0] and reason == "length"
            assert request.cached_tokens == cached and request.prompt_tokens == len(flat)
            assert scheduler.prompt_tokens_computed - before == len(flat) - cached
        assert scheduler.cache.hits == 3 and scheduler.cache.misses == 1
        # the LRU stays within its bytes: a tiny cache holds what fits and evicts the oldest
        assert scheduler.cache.bytes <= scheduler.cache.max_bytes and len(scheduler.cache.entries) >= 3
    finally:
        scheduler.close()


def test_a_group_reads_its_prompt_once_and_each_fork_samples_as_if_alone():
    model = random_model("eagle", seed=6)
    prompt = list(range(1, 40))
    sampler = SamplerConfig(temperature=1.0, top_p=0.9)
    scheduler = Scheduler(model, max_batch=4)
    try:
        alone = []
        for seed in (7, 8, 9):
            c = Collector()
            scheduler.submit(prompt, 15, sampler, seed=seed, on_token=c, stop_ids=())
            assert c.done.wait(60)
            alone.append(c.tokens)
        before = scheduler.prompt_tokens_computed
        forks = [Collector() for _ in range(3)]
        scheduler.submit_group(prompt, 15, sampler, [7, 8, 9], forks, stop_ids=())
        assert all(c.done.wait(60) for c in forks)
        assert scheduler.prompt_tokens_computed - before == len(prompt)
        assert [c.tokens for c in forks] == alone and len({tuple(t) for t in alone}) > 1
    finally:
        scheduler.close()


def test_a_long_prompt_is_read_in_chunks_while_running_streams_go_on():
    model = random_model("finch", seed=7)
    long_prompt = torch.randint(1, model.cfg.vocab_size, (120,), generator=torch.Generator().manual_seed(2)).tolist()
    scheduler = Scheduler(model, max_batch=2, prefill_chunk=8)   # 15 chunks
    try:
        events = []
        running = Collector()
        scheduler.submit([1, 2], 10 ** 6, GREEDY, seed=0, stop_ids=(),
                         on_token=lambda t, r: (events.append("running"), running(t, r)))
        wait_until(lambda: len(running.tokens) > 2)
        late = Collector()
        scheduler.submit(long_prompt, 5, GREEDY, seed=0, stop_ids=(),
                         on_token=lambda t, r: (events.append("late"), late(t, r)))
        assert late.done.wait(60)
        between = events[:events.index("late")]
        assert between.count("running") >= 14   # a decode step after each chunk of the long prompt
        assert late.tokens == reference_greedy(model, long_prompt, 5)[0]
    finally:
        scheduler.close()


def test_a_request_can_start_from_its_own_state():
    model = random_model("finch", seed=8)
    prompt = [5, 6, 7]
    with torch.no_grad():
        _, state = model(torch.tensor([[9, 10, 11, 12]]))   # a conversation so far
    scheduler = Scheduler(model, max_batch=2, cache_mb=1)
    try:
        tokens, _, _ = run_one(scheduler, prompt, 10, initial_state=state, initial_key="talk")
        assert tokens == reference_greedy(model, [9, 10, 11, 12] + prompt, 10)[0]
        plain, _, request = run_one(scheduler, prompt, 10)   # same ids, other start: no cache hit
        assert request.cached_tokens == 0 and plain == reference_greedy(model, prompt, 10)[0]
    finally:
        scheduler.close()

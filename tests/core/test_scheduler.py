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

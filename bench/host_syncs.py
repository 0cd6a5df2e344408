"""Where the host waits for the GPU while serving: prefill time, and every synchronising call of a
packed prefill, of decode steps and of the scheduler, by source line (torch's sync debug mode).

    python bench/host_syncs.py [MODEL]        # CUDA only; MODEL: a preset (default finch-1.6b), bf16

A wait inside the serving loop stalls the host until the GPU has finished everything queued, so the
host's work (Python, launches) no longer overlaps the GPU's: a prefill of 24 layers with a wait per
layer costs host time + GPU time instead of the larger of the two. Expected: no waits in prefill or
decode; in the scheduler, only the reads of the sampled ids (CUDA events, which the debug mode does
not count).
"""
import collections
import sys
import threading
import time
import traceback
import warnings

import torch

from eaglefinch.rwkv_core import RWKV, RWKVConfig
from eaglefinch.rwkv_core.engine import Engine
from eaglefinch.rwkv_core.sampling import SamplerConfig
from eaglefinch.rwkv_core.scheduler import Scheduler

torch.manual_seed(0)
t0 = time.perf_counter()
with torch.device("cuda"):
    model = RWKV(RWKVConfig.load(sys.argv[1] if len(sys.argv) > 1 else "finch-1.6b")).to(torch.bfloat16).eval()
engine = Engine(model, max_batch=16)
print(f"model + engine {time.perf_counter() - t0:.0f} s", flush=True)
g = torch.Generator().manual_seed(0)
for n, length in ((1, 64), (8, 64), (16, 64), (1, 1024)):
    prompts = [torch.randint(1, 65000, (length,), generator=g).tolist() for _ in range(n)]
    slots = engine.allocate(n)
    for _ in range(3):
        engine.pool.reset(slots)
        engine.prefill(slots, prompts)
    times = []
    for _ in range(8):
        engine.pool.reset(slots)
        torch.cuda.synchronize()
        t = time.perf_counter()
        engine.prefill(slots, prompts)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    engine.release(slots)
    print(f"prefill {n} x {length}: best {min(times) * 1e3:.1f} ms, median {sorted(times)[4] * 1e3:.1f} ms", flush=True)

sites = collections.Counter()
lock = threading.Lock()


def show(message, category, filename, lineno, file=None, line=None):
    frames = [f for f in traceback.extract_stack()[:-1] if "rwkv_core" in f.filename or "kernels" in f.filename or "sampling" in f.filename]
    where = " <- ".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}" for f in reversed(frames[-4:]))
    with lock:
        sites[where or filename] += 1


warnings.showwarning = show
warnings.simplefilter("always")


def report(what):
    print(f"syncs during {what}: {sum(sites.values())}", flush=True)
    for where, count in sites.most_common(12):
        print(f"  {count:5d}  {where}", flush=True)
    sites.clear()


prompts = [torch.randint(1, 65000, (64,), generator=g).tolist() for _ in range(8)]
slots = engine.allocate(8)
torch.cuda.synchronize()
torch.cuda.set_sync_debug_mode("warn")
engine.prefill(slots, prompts)
torch.cuda.set_sync_debug_mode(0)
report("one packed prefill of 8 x 64")
ids = torch.zeros(8, dtype=torch.long, device="cuda")
torch.cuda.synchronize()
torch.cuda.set_sync_debug_mode("warn")
for _ in range(10):
    ids = engine.decode(slots, ids).argmax(-1)
torch.cuda.set_sync_debug_mode(0)
report("10 decode steps at B = 8")
engine.release(slots)
del engine
torch.cuda.empty_cache()

scheduler = Scheduler(model, max_batch=16)
done = threading.Semaphore(0)


def on_token(token, reason):
    if reason is not None:
        done.release()


for i in range(4):   # warm-up
    scheduler.submit(prompts[i], 8, SamplerConfig(temperature=1.0), seed=i, on_token=on_token)
for i in range(4):
    done.acquire()
torch.cuda.synchronize()
torch.cuda.set_sync_debug_mode("warn")
t = time.perf_counter()
for i in range(16):
    scheduler.submit(prompts[i % 8], 64, SamplerConfig(temperature=1.0), seed=i, on_token=on_token)
for i in range(16):
    done.acquire()
torch.cuda.set_sync_debug_mode(0)
print(f"scheduler: 16 requests x 64 tokens in {time.perf_counter() - t:.2f} s", flush=True)
report("the scheduler serving 16 requests of 64 tokens (prefill + 64 decode steps each)")
scheduler.close()

"""Serving benchmark: the OpenAI-compatible server (`eaglefinch.serve`) under N concurrent streaming
clients, against the engine's raw decode rate, in one run.

    python bench/serve.py [--quick] [--json out.json]     # CUDA: Finch-1.6B, bf16, N = 1, 16, 64, 256
    python bench/serve.py --cpu [--json out.json]         # CPU: 4 x 128 Finch, fp32, N = 1, 4, 8 (a check)

Model: Finch-1.6B (configs/finch-1.6b.json) with the official random initialisation in bf16 (as
bench/inference.py makes it), the World tokenizer; on the CPU a 4-layer, 128-wide Finch with the World
vocabulary in fp32 (weights perturbed off the official init so its outputs vary), one torch thread.

1. The engine alone: the batched server's own engine (made by `create_app`, timed before uvicorn
   starts, so it is idle), B prompts of 16 tokens prefilled, then timed `engine.decode` steps (argmax
   on the device, synchronised; best of 3: bench/inference.py's `ours_decode`) at B = 1, 64 and each
   N: step time and tokens/s. This is the ceiling the server is held against.
2. The server: `create_app(model, tokenizer, max_batch=...)` (default 256) run by uvicorn in a
   thread of this process on a free port. The clients are written with asyncio and raw HTTP/1.1
   (stdlib only: no httpx or openai needed) and run in worker processes of their own
   (`--load-worker`, at most 64 clients each), so that reading their streams does not take the
   server's GIL. N clients each send
   `--requests-per-client` requests back to back (a closed loop; all start together): POST
   /v1/completions, stream=true, a prompt of ~64 tokens of random English words (a different one
   for every request, so a prefix cache could not help), max_tokens, temperature 1.0, a seed per
   request. The model is random, so a reply runs to max_tokens unless it samples the end-of-text
   token (about 1 in 65k per token when its logits are flat); the finish reasons are counted and
   reported. Every server-sent event with text is timed as it arrives:
     TTFT = first text event - the request's start (its bytes written),
     ITL  = gaps between consecutive text events of one stream (one event may carry more than one
            token when text is held back, e.g. an incomplete UTF-8 character: `tok/event` says how
            many on average),
     TPOT = (last - first text event) / (max_tokens - 1), averaged over replies that ran to
            max_tokens.
   Output tokens are the server's own count: /metrics `eaglefinch_generated_tokens_total` read
   before and after each round (the JSON keeps every `_total` counter's change, e.g. prompt tokens
   read from the prefix cache); tokens/s and requests/s are over the round's wall time (from the
   common start to the last reply's end). Each server first serves two short warm-up rounds.
3. Batching off: the same server with max_batch = 1 (requests queue and run one at a time), for the
   smaller N only (`--off-clients`), at most `--off-max-requests` requests a round (one per client
   when N x requests-per-client is over it): at B = 1 a reply of 256 tokens takes about 0.7 s on an
   H100, so N = 256 would take minutes.

Targets (issue 19): at 64 clients, output tokens/s >= 60% of the engine's B = 64 decode tokens/s,
and ITL p99 <= 3x the engine's B = 64 step time. Both ratios are printed (at the largest N when 64 is
not run, as on the CPU). --json also records the device, torch version, date, git commit and the
command line; it is rewritten after every round, so a run cut short keeps what it measured.
"""
import argparse
import asyncio
import datetime
import gc
import http.client
import json
import math
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from eaglefinch.rwkv_core.files import git_commit

REPO = Path(__file__).resolve().parents[1]
CLIENTS_PER_WORKER = 64

# ---- the load generator: stdlib only, runs in worker processes ----------------------------------


class SSEReader:
    """Server-sent events of one streamed completion: times of the events with text, finish reason."""

    def __init__(self):
        self.buf = b""
        self.times = []       # arrival time of each event with text
        self.chars = 0
        self.finish = None
        self.done = False     # data: [DONE] seen
        self.error = None

    def feed(self, data: bytes, t: float):
        self.buf += data
        while (i := self.buf.find(b"\n\n")) >= 0:
            event, self.buf = self.buf[:i], self.buf[i + 2:]
            for line in event.split(b"\n"):
                if line.startswith(b"data:"):
                    self._data(line[5:].strip(), t)

    def _data(self, payload: bytes, t: float):
        if payload == b"[DONE]":
            self.done = True
            return
        obj = json.loads(payload)
        if "error" in obj:
            self.error = str(obj["error"].get("message", obj["error"]))[:200]
            return
        for choice in obj.get("choices", ()):
            text = choice.get("text")
            if text is None:   # a chat chunk
                text = (choice.get("delta") or {}).get("content") or ""
            if text:
                self.times.append(t)
                self.chars += len(text)
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]


class Connection:
    """One keep-alive HTTP/1.1 connection of a client (opened again when the server closes it)."""

    def __init__(self, host, port):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def open(self):
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 22)

    def close(self):
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def post(self, path: str, body: bytes, sse: SSEReader) -> int:
        """POST `body` (JSON) and feed the response body to `sse` as it arrives; the HTTP status."""
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        for attempt in range(2):   # a kept-alive connection the server has closed: once more, on a new one
            await self.open()
            try:
                self.writer.write(head + body)
                await self.writer.drain()
                status_line = await self.reader.readuntil(b"\r\n")
                break
            except (ConnectionError, asyncio.IncompleteReadError):
                self.close()
                if attempt:
                    raise
        status = int(status_line.split()[1])
        headers = {}
        while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip().lower()
        body_out = b""
        if headers.get("transfer-encoding") == "chunked":
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    while await self.reader.readuntil(b"\r\n") != b"\r\n":   # trailers
                        pass
                    break
                data = (await self.reader.readexactly(size + 2))[:-2]
                if status == 200:
                    sse.feed(data, time.monotonic())
                else:
                    body_out += data
        elif "content-length" in headers:
            data = await self.reader.readexactly(int(headers["content-length"]))
            if status == 200:
                sse.feed(data, time.monotonic())
            else:
                body_out = data
        else:   # the body ends with the connection
            body_out = await self.reader.read()
            if status == 200:
                sse.feed(body_out, time.monotonic())
            self.close()
        if headers.get("connection") == "close":
            self.close()
        if status != 200:
            sse.error = f"HTTP {status}: {body_out[:200].decode(errors='replace')}"
        return status


async def client(spec, prompts, seeds, records):
    """One client: its requests one after another on one connection."""
    conn = Connection(spec["host"], spec["port"])
    try:
        for prompt, seed in zip(prompts, seeds):
            body = json.dumps({"model": spec["model"], "prompt": prompt, "max_tokens": spec["max_tokens"],
                               "temperature": spec["temperature"], "seed": seed, "stream": True}).encode()
            sse = SSEReader()
            start = time.monotonic()
            try:
                await asyncio.wait_for(conn.post("/v1/completions", body, sse), spec["timeout"])
            except Exception as e:   # noqa: BLE001 -- recorded, the round goes on
                sse.error = f"{type(e).__name__}: {e}"[:200]
                conn.close()
            end = time.monotonic()
            t = sse.times
            records.append({"start": start, "end": end, "ttft": t[0] - start if t else None,
                            "itl": [round(b - a, 7) for a, b in zip(t, t[1:])],
                            "span": t[-1] - t[0] if t else None, "events": len(t), "chars": sse.chars,
                            "finish": sse.finish, "done": sse.done, "error": sse.error})
    finally:
        conn.close()


async def run_clients(spec):
    records = []
    await asyncio.gather(*(client(spec, p, s, records) for p, s in zip(spec["prompts"], spec["seeds"])))
    return records


def load_worker():
    """`--load-worker`: a spec (one JSON line) on stdin, then "ready" out; on "go" in, the clients run;
    the records (one JSON line) out."""
    spec = json.loads(sys.stdin.readline())
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    records = asyncio.run(run_clients(spec))
    print(json.dumps({"records": records}), flush=True)


# ---- rounds against a server ------------------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_metrics(port) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition(" ")
            out[name] = float(value)
    return out


def percentile(values, q):
    """Linear interpolation between closest ranks (numpy's default); None for no values."""
    if not values:
        return None
    v = sorted(values)
    pos = (len(v) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def ms(x):
    return None if x is None else x * 1e3


def run_round(port, model_name, prompts, n_clients, per_client, max_tokens, seed, timeout=600.0):
    """N clients, `per_client` requests each; the round's figures (times in ms)."""
    workers, n_workers = [], math.ceil(n_clients / CLIENTS_PER_WORKER)
    for w in range(n_workers):
        ids = range(w, n_clients, n_workers)
        spec = {"host": "127.0.0.1", "port": port, "model": model_name, "max_tokens": max_tokens,
                "temperature": 1.0, "timeout": timeout,
                "prompts": [prompts[c * per_client:(c + 1) * per_client] for c in ids],
                "seeds": [[seed + c * per_client + j for j in range(per_client)] for c in ids]}
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--load-worker"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        proc.stdin.write(json.dumps(spec) + "\n")
        proc.stdin.flush()
        workers.append(proc)
    for proc in workers:
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("a load worker failed to start")
    before = read_metrics(port)
    t0 = time.monotonic()
    for proc in workers:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    records = []
    for proc in workers:
        line = proc.stdout.readline()
        proc.wait()
        if not line:
            raise RuntimeError(f"a load worker failed (exit status {proc.returncode})")
        records += json.loads(line)["records"]
    wall = max(r["end"] for r in records) - t0
    after = read_metrics(port)
    tokens = after["eaglefinch_generated_tokens_total"] - before["eaglefinch_generated_tokens_total"]
    prompt_tokens = after.get("eaglefinch_prompt_tokens_total", 0) - before.get("eaglefinch_prompt_tokens_total", 0)
    ok = [r for r in records if r["error"] is None]
    ttft = [r["ttft"] for r in ok if r["ttft"] is not None]
    itl = [g for r in ok for g in r["itl"]]
    events = sum(r["events"] for r in ok)
    full = [r["span"] / (max_tokens - 1) for r in ok if r["finish"] == "length" and r["span"] and max_tokens > 1]
    finish = {}
    for r in records:
        key = r["finish"] or ("error" if r["error"] else "none")
        finish[key] = finish.get(key, 0) + 1
    return {"clients": n_clients, "requests_per_client": per_client, "requests": len(records),
            "completed": len(ok), "errors": sorted({r["error"] for r in records if r["error"]})[:5],
            "wall_s": wall, "requests_per_s": len(ok) / wall, "output_tokens": tokens,
            "output_tokens_per_s": tokens / wall, "prompt_tokens_per_request": prompt_tokens / max(len(records), 1),
            "tokens_per_event": tokens / events if events else None, "text_events": events,
            "ttft_ms": {"p50": ms(percentile(ttft, 50)), "p99": ms(percentile(ttft, 99)),
                        "max": ms(max(ttft, default=None))},
            "itl_ms": {"p50": ms(percentile(itl, 50)), "p99": ms(percentile(itl, 99)),
                       "max": ms(max(itl, default=None)), "samples": len(itl)},
            "tpot_ms_mean": ms(sum(full) / len(full)) if full else None,
            "finish_reasons": finish,
            "metrics_delta": {k[len("eaglefinch_"):]: after[k] - before.get(k, 0) for k in after
                              if k.startswith("eaglefinch_") and k.endswith("_total")}}


class BackgroundServer:
    """uvicorn serving `app` from a thread of this process on a free port."""

    def __init__(self, app):
        import uvicorn
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="on", timeout_keep_alive=30, backlog=4096))
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(60)


# ---- the benchmark ----------------------------------------------------------------------------

WORDS = ("the of and to in is was for on that with as by at from his her they this which had not are but "
         "be one have were an all their there been has when who will more no if out so said what up its "
         "about into than them can only other new some could time these two may then do first any my now "
         "such like our over man me even most made after also did many before must through back years "
         "where much your way well down should because each just those people how too little state good "
         "very make world still own see men work long get here between both life being under never day "
         "same another know while last might us great old year off come since against go came right used "
         "take three river garden silver morning engine window paper music harbour forest letter winter "
         "Monday London quickly number green machine question simple north market island. story, sound; "
         "Yes! why? light.").split()


def make_prompts(tokenizer, n, length, seed):
    """n texts of random words, each cut to `length` tokens."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        ids = tokenizer.encode(" ".join(rng.choice(WORDS) for _ in range(length + 16)))[:length]
        out.append(tokenizer.decode(ids))
    return out


def build_model(args):
    import torch

    from eaglefinch.rwkv_core import RWKV, RWKVConfig
    torch.manual_seed(0)
    if args.cpu:
        cfg = RWKVConfig(arch="finch", n_layer=4, n_embd=128, head_size=32, mix_lora_dim=8, decay_lora_dim=16)
        model = RWKV(cfg).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.02)
        return model, "finch-4x128-random"
    cfg = RWKVConfig.load("finch-1.6b")
    with torch.device("cuda"):
        model = RWKV(cfg).to(torch.bfloat16).eval()
    return model, "finch-1.6b-random"


def measure_engine(app, batches, steps, res):
    """The raw decode rates {B: step time, tokens/s} on the server's own engine, idle (uvicorn has not
    started yet), timed as bench/inference.py times the engine; into res["engine"]."""
    sys.path.insert(0, str(Path(__file__).parent))
    from inference import ours_decode
    engine = app.state.server.scheduler.engine
    res["engine"] = {}
    for b in batches:
        tokens_per_s = ours_decode(engine, b, steps, engine.device)
        res["engine"][str(b)] = {"step_ms": 1e3 * b / tokens_per_s, "tokens_per_s": tokens_per_s}
        print(f"engine B={b}: {1e3 * b / tokens_per_s:.3f} ms/step, {tokens_per_s:,.0f} tok/s", flush=True)


def serve_rounds(model, tokenizer, model_name, max_batch, clients, args, label, res, save, cap=None,
                 before=None):
    """Start a server with `max_batch`, warm it up, run a round per N; results into res[label].
    `before(app)` runs once the app is made, before it serves."""
    import torch

    from eaglefinch.serve.app import create_app
    t = time.perf_counter()
    app = create_app(model, tokenizer, model_name=model_name, max_batch=max_batch)
    block = res[label] = {"max_batch": max_batch, "setup_s": time.perf_counter() - t, "rounds": []}
    print(f"server ({label}, max_batch={max_batch}) made in {block['setup_s']:.1f} s", flush=True)
    if before is not None:
        before(app)
        save()
    seed = 1_000_000 if label == "batched" else 2_000_000   # prompts and seeds of every round differ
    with BackgroundServer(app) as server:
        t = time.perf_counter()
        for n in (1, 8):   # warm-up: one client, then a few at once
            run_round(server.port, model_name, make_prompts(tokenizer, n, args.prompt_tokens, seed=7 + n),
                      n, 1, min(16, args.max_tokens), seed=7)
        block["warmup_s"] = time.perf_counter() - t
        for n in clients:
            per_client = args.requests_per_client if cap is None else max(1, min(args.requests_per_client, cap // n))
            seed += 10_000
            prompts = make_prompts(tokenizer, n * per_client, args.prompt_tokens, seed=seed)
            r = run_round(server.port, model_name, prompts, n, per_client, args.max_tokens, seed=seed)
            block["rounds"].append(r)
            print(json.dumps({label: r}), flush=True)
            save()
    app = server = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def fmt(x, spec=".1f"):
    return "-" if x is None else format(x, spec)


def report(res):
    lines = ["", f"{res['device']}, torch {res['torch']}, {res['model']}, prompt ~{res['args']['prompt_tokens']} "
                 f"tokens, max_tokens {res['args']['max_tokens']}", "",
             "engine (raw decode, argmax on the device)", f"{'B':>6} {'step ms':>9} {'tok/s':>10}"]
    for b, r in res["engine"].items():
        lines.append(f"{b:>6} {r['step_ms']:>9.3f} {r['tokens_per_s']:>10,.0f}")
    head = (f"{'batching':>9} {'N':>4} {'reqs':>5} {'wall s':>7} {'req/s':>7} {'out tok/s':>10} {'TTFT p50':>9} "
            f"{'TTFT p99':>9} {'ITL p50':>8} {'ITL p99':>8} {'TPOT':>6} {'tok/ev':>6}  finish")
    lines += ["", "server (times in ms; ITL: between streamed events; TPOT: mean per token of full-length replies)",
              head]
    for label, name in (("batched", "on"), ("unbatched", "off (B=1)")):
        for r in res.get(label, {}).get("rounds", []):
            lines.append(f"{name:>9} {r['clients']:>4} {r['requests']:>5} {r['wall_s']:>7.2f} "
                         f"{r['requests_per_s']:>7.2f} {r['output_tokens_per_s']:>10,.0f} "
                         f"{fmt(r['ttft_ms']['p50']):>9} {fmt(r['ttft_ms']['p99']):>9} "
                         f"{fmt(r['itl_ms']['p50'], '.2f'):>8} {fmt(r['itl_ms']['p99'], '.2f'):>8} "
                         f"{fmt(r['tpot_ms_mean'], '.2f'):>6} {fmt(r['tokens_per_event'], '.2f'):>6}  "
                         + " ".join(f"{k}:{v}" for k, v in sorted(r["finish_reasons"].items())))
    t = res.get("targets")
    if t:
        lines += ["", f"at {t['clients']} clients against the engine at B = {t['clients']}: output "
                      f"{t['output_tokens_per_s']:,.0f} / {t['engine_tokens_per_s']:,.0f} tok/s = "
                      f"{t['throughput_ratio']:.2f} (target >= 0.60: {'met' if t['throughput_met'] else 'NOT met'}); "
                      f"ITL p99 {t['itl_p99_ms']:.2f} ms / step {t['engine_step_ms']:.3f} ms = {t['itl_ratio']:.2f} "
                      f"(target <= 3: {'met' if t['itl_met'] else 'NOT met'})"]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="a tiny model on the CPU, small N (a quick check)")
    ap.add_argument("--quick", action="store_true", help="fewer N, requests and tokens")
    ap.add_argument("--clients", help="N, comma-separated (default 1,16,64,256; --cpu 1,4,8; --quick 1,64)")
    ap.add_argument("--off-clients", help="N with batching off (default 1,16,64; --cpu 1,4; --quick 1,16; "
                                          "'' for none)")
    ap.add_argument("--off-max-requests", type=int, default=64,
                    help="batching off: at most this many requests a round (one per client above it; default 64)")
    ap.add_argument("--max-tokens", type=int, help="max_tokens of each request (default 256; --cpu 32; --quick 128)")
    ap.add_argument("--requests-per-client", type=int, help="requests each client sends (default 2; --quick 1)")
    ap.add_argument("--prompt-tokens", type=int, default=64, help="prompt length in tokens (default 64)")
    ap.add_argument("--max-batch", type=int, help="the batched server's max_batch (default 256; --cpu 8)")
    ap.add_argument("--engine-steps", type=int, help="decode steps timed per B (default 100; --cpu 10; --quick 20)")
    ap.add_argument("--json", help="also write the results to this file (rewritten after each round)")
    ap.add_argument("--load-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.load_worker:
        return load_worker()

    import torch
    sys.path.insert(0, str(REPO))
    from eaglefinch.text.tokenizer import WorldTokenizer
    if not args.cpu and not torch.cuda.is_available():
        ap.error("no CUDA device: run with --cpu for the CPU check")

    def ints(text):
        return [int(x) for x in text.split(",") if x.strip()]
    cpu, quick = args.cpu, args.quick
    clients = ints(args.clients or ("1,4,8" if cpu else "1,64" if quick else "1,16,64,256"))
    off_clients = ints(args.off_clients if args.off_clients is not None else
                       ("1,4" if cpu else "1,16" if quick else "1,16,64"))
    args.max_tokens = args.max_tokens or (32 if cpu else 128 if quick else 256)
    args.requests_per_client = args.requests_per_client or (1 if quick else 2)
    args.max_batch = args.max_batch or (8 if cpu else 256)
    steps = args.engine_steps or (10 if cpu else 20 if quick else 100)

    t_start = time.perf_counter()
    model, model_name = build_model(args)
    tokenizer = WorldTokenizer()
    tokenizer.encode("warm")   # builds the encoder once
    res = {"device": "cpu" if cpu else torch.cuda.get_device_name(), "torch": torch.__version__,
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "git_commit": git_commit(), "command": " ".join([Path(sys.executable).name] + sys.argv),
           "model": model_name, "tokenizer_backend": tokenizer.backend,
           "args": {k: v for k, v in vars(args).items() if k != "load_worker"} | {
               "clients": clients, "off_clients": off_clients, "engine_steps": steps}}
    if cpu:   # one thread: the server's event loop and the clients take the other cores, and a busy
        torch.set_num_threads(1)   # machine does not stall torch's thread barriers
        res["threads"] = torch.get_num_threads()

    def save():
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=1))

    batches = sorted({1, 64 if not cpu else max(clients)} | {n for n in clients})
    batches = sorted({min(b, args.max_batch) for b in batches})
    serve_rounds(model, tokenizer, model_name, args.max_batch, clients, args, "batched", res, save,
                 before=lambda app: measure_engine(app, batches, steps, res))
    if off_clients:
        serve_rounds(model, tokenizer, model_name, 1, off_clients, args, "unbatched", res, save,
                     cap=args.off_max_requests)

    ref = 64 if 64 in clients else max(clients)
    b = min(ref, args.max_batch)
    row = next(r for r in res["batched"]["rounds"] if r["clients"] == ref)
    if str(b) in res["engine"] and row["itl_ms"]["p99"] is not None:
        eng = res["engine"][str(b)]
        res["targets"] = {"clients": ref, "output_tokens_per_s": row["output_tokens_per_s"],
                          "engine_tokens_per_s": eng["tokens_per_s"],
                          "throughput_ratio": row["output_tokens_per_s"] / eng["tokens_per_s"],
                          "itl_p99_ms": row["itl_ms"]["p99"], "engine_step_ms": eng["step_ms"],
                          "itl_ratio": row["itl_ms"]["p99"] / eng["step_ms"]}
        res["targets"]["throughput_met"] = res["targets"]["throughput_ratio"] >= 0.6
        res["targets"]["itl_met"] = res["targets"]["itl_ratio"] <= 3
    res["total_s"] = time.perf_counter() - t_start
    save()
    print(report(res))
    print(f"total {res['total_s']:.0f} s")


if __name__ == "__main__":
    main()

"""Captioning and VisualRWKV training at real encoder sizes (issue 22): open_clip's ViT-B-16 (224 px,
196 patches) and ViT-L-14-336 (336 px, 576 patches) towers with random weights, the class token after
the patches (197 and 577 image tokens; `--pool K` pools the grid k x k), a linear projector, and
Finch-1.6B (configs/finch-1.6b.json), in one process on one GPU.

    python bench/caption.py [--quick] [--json OUT]      # CUDA; sized to finish within 5 minutes on an H100
    python bench/caption.py --cpu [--json OUT]          # a check of the script: finch-tiny, towers ViT-S-32
                                                        # and EagleFinch-ViT-Tiny, fp32 (about 30 s on 2 cores)

Captioning, per tower (bf16; one backbone and one engine serve both towers): B images at once, B in
1, 8, 32, 64 (--quick: 1, 32), through what `visual.caption.answer_ids` runs, phase by phase, the
device synchronised between phases:
  encode   `vlm.cached_image_embeds` of B new images: the SHA-256 of each image's pixels on the host
           (the feature cache's key), the copy to the GPU, the tower, the projector (the tower alone
           on images already on the GPU is timed apart: tower_ms_per_image)
  prefill  `visual.caption.start_answers`: the prompt "User: <image>\\nDescribe the image.\\n\\nAssistant:"
           (image first), embedded with the image tokens spliced in, one `Engine.prefill_embeds` of
           the B rows (in forwards of at most the engine's prefill_tokens)
  decode   the `Generation`'s steps (greedy, sampled on the device, one host sync per step),
           --max-new tokens per image; stop ids are off so that every caption has that length (where a
           random model stops would be arbitrary)
Reported per (tower, B): images/s = B / (encode + prefill + decode); time to first token = encode +
prefill + the first step (the first token reaches the caller; the engine has read it too), p50 over
the rounds; decode tokens/s = B x (max_new - 1) / the later steps; encoder ms per image; and the time
to first token of the same images again, their features cached (hash and projector instead of the
tower). Images are random tensors of the tower's input size, as `preprocess` gives them; what the host
pays per image before that (resize, crop and normalise of a 640 x 480 RGB image, not the file's
decoding) and for the hash is measured apart ("host"). Every (tower, B) runs one untimed warm-up round
first (Triton compiles, torch.compile of the prefill step at new shapes); making the engine (compiled
decode step, a CUDA graph per batch bucket up to the largest B) is timed on its own.

Training, with the last tower (ViT-L-14-336): the shared trainer's step (rwkv_core.train `prepare` and
`train_step` on a LocalProcess: bf16 autocast over fp32 weights, backward, clipping, fused AdamW) on
`visual.train.VisualTask` (answer-token loss per sample plus L2Wrap; the frozen encoder runs in every
step, as in training) for stage 1 (only the projector trains; the backward still goes through the
backbone to the image tokens) and stage 2 (projector and backbone), with activation checkpointing
(`--no-checkpointing`: without), eager blocks (the visual configs' default; `--compile`: compiled), at
B = 8 and 16 (--quick: 8) of one caption sample, image first and a 31-token answer (T = image tokens
+ 44). Reported: samples/s, tokens/s (B x T / the median step), step time, peak memory since the run
began (weights, gradients and optimizer state included), the first step's time, and the encoder's
forward alone on the step's B images. The backbone is freshly initialised, whose zeroed output
projections make the image tokens reach no logit: stage 1's projector gets a zero gradient (its loss
stays put), but the step does the same work as with trained weights. Training runs first: once
captioning has made the model's shared engine, that backbone stays in memory.

--json OUT gets everything (device, date, commit, command), rewritten after each measurement, so a
run cut short keeps what it measured.
"""
import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import open_clip
import torch
from PIL import Image

from eaglefinch.rwkv_core import RWKV, RWKVConfig
from eaglefinch.rwkv_core.files import git_commit
from eaglefinch.rwkv_core.generate import engine_for
from eaglefinch.rwkv_core.train import LocalProcess, TrainConfig, prepare, train_step
from eaglefinch.text.tokenizer import WorldTokenizer
from eaglefinch.visual.caption import DEFAULT_PROMPT, GREEDY, prompt_ids, start_answers
from eaglefinch.visual.data import collate_visual
from eaglefinch.visual.encoder import DEFAULT_MODEL, VisionEncoder, register_model_configs
from eaglefinch.visual.model import VisualConfig, VisualRWKV, pixel_digest, pixel_digests
from eaglefinch.visual.prompt import encode_conversation
from eaglefinch.visual.train import VisualTask
from gpu_memory import failure_status, free_memory, peak_gb   # bench/gpu_memory.py, beside this script

CAPTION = ("A small red boat is tied to a wooden pier on a calm lake, with pine trees and a grey mountain "
           "behind it under a cloudy sky.")   # 31 World tokens with its leading space and "\n\n"


def log(*args):
    print(*args, flush=True)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def allocated_gb(device):
    return {"allocated_at_start_GB": torch.cuda.memory_allocated() / 1e9} if device.type == "cuda" else {}


class Clock:
    """Wall time between marks, the device synchronised at each."""

    def __init__(self, device):
        self.device = device
        sync(device)
        self.t = time.perf_counter()

    def lap(self) -> float:
        sync(self.device)
        now = time.perf_counter()
        seconds, self.t = now - self.t, now
        return seconds


def build_backbone(args, device, dtype):
    torch.manual_seed(0)
    with torch.device(device):   # the official initialisation runs on the GPU: seconds, not minutes
        return RWKV(RWKVConfig.load(args.config)).to(dtype)


def build_vlm(model, tower, args, device, dtype):
    """A VisualRWKV of `tower` (random weights) on `model`, image first, bidirectional scan."""
    cfg = VisualConfig(encoder=tower, pool=args.pool, projector="linear", image_position="first")
    torch.manual_seed(1)
    encoder = VisionEncoder(tower, random_init=True, pool=cfg.pool)
    vlm = VisualRWKV(model, encoder, cfg)
    return vlm.to(device, dtype).eval()


def random_pixels(vlm, n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, *vlm.encoder.image_size, generator=g)


# ---- captioning ------------------------------------------------------------------------------
def host_costs(vlm, n=16):
    """ms per image on the host: `preprocess` of a 640 x 480 RGB image, and the feature cache's hash."""
    g = torch.Generator().manual_seed(0)
    images = [Image.fromarray(torch.randint(0, 256, (480, 640, 3), generator=g, dtype=torch.uint8).numpy())
              for _ in range(n)]
    t = time.perf_counter()
    pixels = [vlm.encoder.preprocess(image) for image in images]
    preprocess = (time.perf_counter() - t) / n
    t = time.perf_counter()
    for p in pixels:
        pixel_digest(p, vlm.encoder.dtype)
    digest = (time.perf_counter() - t) / n
    t = time.perf_counter()
    pixel_digests(torch.stack(pixels), vlm.encoder.dtype)   # the batch in threads, as the cache does
    batch_digest = (time.perf_counter() - t) / n
    return {"preprocess_ms_per_image": preprocess * 1e3, "hash_ms_per_image": digest * 1e3,
            "batch_hash_ms_per_image": batch_digest * 1e3}


def caption_round(vlm, tokenizer, pixels, max_new, device):
    """One batch captioned, phase by phase: seconds of (encode, prefill, first step, later steps)."""
    clock = Clock(device)
    image_embeds = vlm.cached_image_embeds(pixels)
    encode = clock.lap()
    generation = start_answers(vlm, tokenizer, image_embeds, DEFAULT_PROMPT, max_new, GREEDY, stop_ids=())
    prefill = clock.lap()
    steps = iter(generation)
    next(steps)
    first = clock.lap()
    n_later = sum(1 for _ in steps)
    later = clock.lap()
    if n_later != max_new - 1 or any(len(t) != max_new for t in generation.tokens):
        raise RuntimeError(f"expected {max_new} tokens per image, got {[len(t) for t in generation.tokens]}")
    return encode, prefill, first, later


def caption_row(vlm, tokenizer, tower, B, args, device):
    """B images at a time: one warm-up round, `rounds` timed rounds of new images, and a round of the
    last images again with their features cached."""
    prompt_tokens = len(prompt_ids(vlm, tokenizer).ids)
    row = {"tower": tower, "image_tokens": vlm.n_image_tokens, "prompt_tokens": prompt_tokens, "batch": B,
           "max_new_tokens": args.max_new}
    free_memory(device)
    row.update(allocated_gb(device))
    try:
        caption_round(vlm, tokenizer, random_pixels(vlm, B, seed=10_000 + B), args.max_new, device)  # warm-up
        rounds = []
        for r in range(args.rounds):
            pixels = random_pixels(vlm, B, seed=B * 100 + r)
            rounds.append(caption_round(vlm, tokenizer, pixels, args.max_new, device))
        misses = vlm.features.misses
        cached = caption_round(vlm, tokenizer, pixels, args.max_new, device)
        row["cached_round_images_encoded"] = vlm.features.misses - misses   # 0: the cache served all
        on_device = pixels.to(device)
        with torch.no_grad():
            clock = Clock(device)
            vlm.encoder(on_device)
            row["tower_ms_per_image"] = clock.lap() / B * 1e3   # the tower alone: no hash, copy or projector
    except Exception as exc:  # noqa: BLE001  a batch that fails is reported, the others still run
        row["status"] = failure_status(exc)
        return {**row, **peak_gb(device)}
    encode, prefill, first, later = (statistics.median(part) for part in zip(*rounds))
    total = [sum(r) for r in rounds]
    row.update(
        status="ok",
        images_per_s=B / statistics.median(total),
        ttft_p50_ms=statistics.median(r[0] + r[1] + r[2] for r in rounds) * 1e3,
        ttft_cached_ms=(cached[0] + cached[1] + cached[2]) * 1e3,
        decode_tokens_per_s=B * (args.max_new - 1) / later,
        encoder_ms_per_image=encode / B * 1e3,
        encode_ms=encode * 1e3, prefill_ms=prefill * 1e3, first_step_ms=first * 1e3, later_steps_ms=later * 1e3,
        prefill_tokens_per_s=B * prompt_tokens / prefill,
        cached_encode_ms=cached[0] * 1e3,
        rounds_ms=[[t * 1e3 for t in r] for r in rounds],
        feature_cache_MB=vlm.features.bytes / 1e6,
        **peak_gb(device))
    return row


def caption_line(row):
    head = f"{row['tower']:26s} B={row['batch']:<3d}"
    if row["status"] != "ok":
        return f"{head} {row['status']}"
    return (f"{head} {row['images_per_s']:8.1f} images/s, TTFT p50 {row['ttft_p50_ms']:7.1f} ms "
            f"(cached {row['ttft_cached_ms']:6.1f}), decode {row['decode_tokens_per_s']:8.0f} tok/s, "
            f"encoder {row['encoder_ms_per_image']:6.2f} ms/image; encode {row['encode_ms']:.1f} + prefill "
            f"{row['prefill_ms']:.1f} + first step {row['first_step_ms']:.1f} + {row['max_new_tokens'] - 1} steps "
            f"{row['later_steps_ms']:.1f} ms")


# ---- training --------------------------------------------------------------------------------
def caption_batch(vlm, tokenizer, B):
    """B copies of one caption sample (random pixels): image first, then the instruction and the answer."""
    layout = encode_conversation([("<image>\n" + DEFAULT_PROMPT, CAPTION)], tokenizer.encode, vlm.n_image_tokens,
                                 vlm.cfg.image_position)
    pixels = random_pixels(vlm, B, seed=7)
    return collate_visual([(pixels[b], layout) for b in range(B)])


def train_row(vlm, tokenizer, stage, B, args, device):
    cfg = TrainConfig(batch_size=B, ctx_len=4096, grad_checkpointing=not args.no_checkpointing,
                      compile=args.compile)
    batch = caption_batch(vlm, tokenizer, B)
    T = batch.inputs.shape[1]
    row = {"stage": stage, "batch": B, "ctx": T, "checkpointing": cfg.grad_checkpointing, "compile": cfg.compile}
    free_memory(device)
    row.update(allocated_gb(device))
    task, optimizer = VisualTask(vlm), None
    try:
        vlm.set_stage(stage)
        proc = LocalProcess(cfg, device)
        forward, optimizer = prepare(task, cfg, proc)
        row["trainable_params"] = sum(p.numel() for p in task.parameters() if p.requires_grad)
        batch = batch.to(device)
        times, losses = [], []
        for _ in range(args.warmup + args.steps):
            clock = Clock(device)
            losses.append(train_step(proc, task, forward, batch))
            times.append(clock.lap())
        median = statistics.median(times[args.warmup:])
        with torch.no_grad(), proc.autocast:
            vlm.encoder(batch.pixels)   # warm
            clock = Clock(device)
            vlm.encoder(batch.pixels)
            encoder_s = clock.lap()
        row.update(status="ok", samples_per_s=B / median, tokens_per_s=B * T / median, step_ms=median * 1e3,
                   step_ms_all=[t * 1e3 for t in times], first_step_s=times[0], encoder_ms=encoder_s * 1e3,
                   losses=losses)
    except Exception as exc:  # noqa: BLE001
        row["status"] = failure_status(exc)
    row.update(peak_gb(device))
    del optimizer
    task.zero_grad(set_to_none=True)
    return row


def train_line(row):
    head = f"stage {row['stage']} B={row['batch']:<3d} T={row['ctx']}"
    if row["status"] != "ok":
        return f"{head}: {row['status']}"
    peak = f", peak {row['peak_allocated_GB']:.1f} GB" if "peak_allocated_GB" in row else ""
    return (f"{head}: {row['samples_per_s']:7.2f} samples/s, {row['tokens_per_s']:9,.0f} tok/s, step "
            f"{row['step_ms']:.0f} ms (encoder {row['encoder_ms']:.0f} ms){peak}, first step {row['first_step_s']:.1f} s, "
            f"{row['trainable_params']:,} trainable, loss {row['losses'][0]:.3f} -> {row['losses'][-1]:.3f}")


# ---- the run ---------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true",
                    help=f"check the script on the CPU: finch-tiny, towers ViT-S-32 and {DEFAULT_MODEL}, fp32")
    ap.add_argument("--quick", action="store_true", help="fewer batch sizes, rounds and steps")
    ap.add_argument("--json", help="write the results here (rewritten after each measurement)")
    ap.add_argument("--towers", help="open_clip towers, comma-separated; the last one trains "
                                     f"(default ViT-B-16,ViT-L-14-336; --cpu: ViT-S-32,{DEFAULT_MODEL})")
    ap.add_argument("--config", help="the backbone (default finch-1.6b; --cpu: finch-tiny)")
    ap.add_argument("--pool", type=int, default=1, help="k x k pooling of the patch grid (default 1: every patch)")
    ap.add_argument("--batches", help="captioning batch sizes (default 1,8,32,64; --quick 1,32; --cpu 1,4)")
    ap.add_argument("--max-new", type=int, help="tokens per caption (default 32; --quick 8; --cpu 4)")
    ap.add_argument("--rounds", type=int, help="timed captioning rounds per batch size (default 3; --quick 2; --cpu 1)")
    ap.add_argument("--train-batches", help="training batch sizes (default 8,16; --quick 8; --cpu 2)")
    ap.add_argument("--steps", type=int, help="timed training steps (default 3; --quick 2; --cpu 1)")
    ap.add_argument("--warmup", type=int, help="untimed training steps first (default 2; --quick, --cpu: 1)")
    ap.add_argument("--no-checkpointing", action="store_true", help="train without activation checkpointing")
    ap.add_argument("--compile", action="store_true", help="train with compiled blocks (minutes of compilation)")
    ap.add_argument("--no-train", action="store_true", help="captioning only")
    args = ap.parse_args()
    if not args.cpu and not torch.cuda.is_available():
        ap.error("no CUDA device: run with --cpu for a check of the script")
    small = args.cpu or args.quick
    defaults = {"towers": f"ViT-S-32,{DEFAULT_MODEL}" if args.cpu else "ViT-B-16,ViT-L-14-336",
                "config": "finch-tiny" if args.cpu else "finch-1.6b",
                "batches": "1,4" if args.cpu else "1,32" if args.quick else "1,8,32,64",
                "max_new": 4 if args.cpu else 8 if args.quick else 32,
                "rounds": 1 if args.cpu else 2 if args.quick else 3,
                "train_batches": "2" if args.cpu else "8" if args.quick else "8,16",
                "steps": 1 if args.cpu else 2 if args.quick else 3, "warmup": 1 if small else 2}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    try:
        towers = args.towers.split(",")
        batches = [int(b) for b in args.batches.split(",")]
        train_batches = [int(b) for b in args.train_batches.split(",")]
        if min(batches + train_batches) < 1 or args.max_new < 2 or args.rounds < 1 or args.steps < 1 \
                or args.warmup < 0 or args.pool < 1:
            raise ValueError("batch sizes, --rounds, --steps and --pool must be >= 1, --max-new >= 2, --warmup >= 0")
        RWKVConfig.load(args.config)
        register_model_configs()
        unknown = [t for t in towers if t not in open_clip.list_models()]
        if unknown:
            raise ValueError(f"unknown open_clip towers {unknown}; see open_clip.list_models()")
    except (ValueError, FileNotFoundError) as exc:
        ap.error(str(exc))
    device = torch.device("cpu" if args.cpu else "cuda")
    dtype = torch.float32 if args.cpu else torch.bfloat16

    res = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "commit": git_commit(),
           "command": " ".join(sys.argv), "torch": torch.__version__,
           "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
           "settings": {k: v for k, v in vars(args).items() if k != "json"}, "host": {}, "training": [],
           "captioning": []}

    def save():
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=1))
    log(f"device {res['device']}, torch {res['torch']}, commit {res['commit']}")
    t0 = time.perf_counter()
    tokenizer = WorldTokenizer()

    # training first: the captioning backbone stays in memory with its shared engine once made
    if not args.no_train:
        clock = Clock(device)
        vlm = build_vlm(build_backbone(args, device, torch.float32), towers[-1], args, device, torch.float32)
        res["training_setup"] = {"tower": towers[-1], "image_tokens": vlm.n_image_tokens, "build_s": clock.lap()}
        log(f"training: {towers[-1]} on {args.config}, fp32 weights (bf16 autocast on the GPU), built in "
            f"{res['training_setup']['build_s']:.1f} s")
        for stage in (1, 2):
            for B in train_batches:
                row = train_row(vlm, tokenizer, stage, B, args, device)
                res["training"].append({"tower": towers[-1], **row})
                log(train_line(row))
                save()
        del vlm
        free_memory(device)

    clock = Clock(device)
    model = build_backbone(args, device, dtype).eval()
    res["backbone_build_s"] = clock.lap()
    res["backbone_params"] = sum(p.numel() for p in model.parameters())
    engine = engine_for(model, max(batches))   # the shared engine every Generation of this model takes
    res["engine_setup_s"] = clock.lap()
    log(f"captioning: {args.config}, {res['backbone_params']:,} parameters, built in {res['backbone_build_s']:.1f} s; "
        f"engine for {engine.max_batch} sequences ready in {res['engine_setup_s']:.1f} s")
    save()
    for tower in towers:
        clock = Clock(device)
        vlm = build_vlm(model, tower, args, device, dtype)
        res["host"][tower] = {"build_s": clock.lap(), "image_size": vlm.encoder.image_size,
                              "image_tokens": vlm.n_image_tokens, "width": vlm.encoder.width,
                              "params": sum(p.numel() for p in vlm.encoder.parameters()), **host_costs(vlm)}
        log(f"{tower}: {json.dumps(res['host'][tower])}")
        for B in batches:
            res["captioning"].append(caption_row(vlm, tokenizer, tower, B, args, device))
            log(caption_line(res["captioning"][-1]))
            save()
        del vlm
    res["total_s"] = time.perf_counter() - t0
    save()
    log(f"done in {res['total_s']:.0f} s")


if __name__ == "__main__":
    main()

"""Held-out evaluation of a music model: loss per token and per note, and generated vs held-out music.

    model, tokenizer = MusicRun.open("runs/music").load()
    results = evaluate_music(model, tokenizer, "runs/music-data", ctx_len=256)

Loss: non-overlapping windows of the training ctx_len laid end to end over the split, each from
the model's initial state (as the trainer's validation does). Every target is scored, the
separator included. Loss per note = the same total nats divided by the note-ons among the
targets: it does not depend on how many tokens the vocabulary spends per note. The baseline is
the unigram entropy of those very targets (their own frequencies): no model that ignores context
can do better on them.

Music: `samples` pieces generated from `<start>` and the held-out pieces (decoded from the split)
are compared with `music.metrics.compare_note_sets`: pitch-class histograms, note density and
inter-onset intervals.

Control (`evaluate_control`, a run prepared with `--conditioning`): held-out pieces ask for their
own header, and the generated pieces are checked against it (instruments, tempo, key).
"""
import json
import math
from pathlib import Path

import numpy as np
from tqdm import tqdm

from eaglefinch.rwkv_core.files import atomic_path
from eaglefinch.rwkv_core.data import SEPARATOR, DataError, TokenDataset
from eaglefinch.rwkv_core.heldout import heldout_nats
from eaglefinch.rwkv_core.sampling import SamplerConfig

from .conditioning import condition
from .generate import generate_music
from .metrics import compare_note_sets
from .tokenizer import DRUMS, midi_to_notes
from .train import data_tokenizer

RESULTS_FILE = "eval.json"
REFERENCE_TOKENS = 200_000  # held-out tokens decoded for the music statistics (a few hundred chorales)


def unigram_entropy(counts) -> float:
    """Entropy in nats of the distribution given by counts."""
    p = np.asarray(counts, dtype=float)
    p = p[p > 0] / p.sum()
    return float(-(p * np.log(p)).sum())


def check_data_tokenizer(data_dir, split: str, tokenizer) -> None:
    """DataError unless the split was tokenized with `tokenizer`'s settings (else its ids mean other events)."""
    if data_tokenizer(data_dir, split).to_dict() != tokenizer.to_dict():
        raise DataError(f"{data_dir} was tokenized with another MIDI tokenizer config than the run's; "
                        f"prepare it with the run's tokenizer settings")


def split_documents(data, max_tokens: int = REFERENCE_TOKENS) -> list[np.ndarray]:
    """The token ids of the pieces in the first max_tokens tokens of a split (the last one may be cut)."""
    tokens = data.window(0, min(len(data), max_tokens))
    ends = np.flatnonzero(tokens == SEPARATOR)
    return [doc for doc in np.split(tokens, ends + 1) if len(doc) > 1]


def split_pieces(tokenizer, data, max_tokens: int = REFERENCE_TOKENS, progress: bool = False) -> list:
    """Note lists of the pieces in the first max_tokens tokens of a split (the last one may be cut)."""
    docs = split_documents(data, max_tokens)
    return [midi_to_notes(tokenizer.decode(doc))
            for doc in tqdm(docs, desc=f"reading the pieces of {data.name}", unit="piece", disable=not progress,
                            leave=False)]


def evaluate_music(model, tokenizer, data_dir, split: str = "val", *, ctx_len: int | None = None,
                   batch_size: int = 8, max_tokens: int | None = None, samples: int = 4, seconds: float = 20.0,
                   sampler=SamplerConfig(), seed: int = 0, progress: bool = True) -> dict:
    """Score a music model on `<data_dir>/<split>` and compare `samples` generated pieces with it.

    `progress` shows a bar for each stage (loss, generation, reading the held-out pieces).

    Returns {"split", "data", "ctx_len", "tokens", "notes", "loss" (nats/token), "bits_per_token",
    "loss_per_note" (nats/note, None without notes), "unigram_entropy" (nats/token of the targets),
    "generated": {"pieces", "notes"}, "reference": {"pieces", "notes"}, "music": compare_note_sets
    output, or None when the generated pieces hold no pitched note}.
    """
    ctx_len = ctx_len or model.cfg.ctx_len
    check_data_tokenizer(data_dir, split, tokenizer)
    data = TokenDataset(data_dir, split)
    nats, counts = heldout_nats(model, data, ctx_len, batch_size, max_tokens, progress=progress)
    tokens = int(counts.sum())
    notes = int(counts[tokenizer.ranges["on"].start:tokenizer.ranges["on"].stop].sum())

    prompts = [[tokenizer.START] for _ in range(samples)]
    generated = [midi_to_notes(tokenizer.decode(ids))
                 for ids in generate_music(model, tokenizer, prompts, seconds, sampler, seed=seed, progress=progress)]
    reference = split_pieces(tokenizer, data, progress=progress)
    pitched = any(n.instrument != DRUMS for piece in generated for n in piece)
    return {
        "split": split,
        "data": str(data_dir),
        "ctx_len": ctx_len,
        "tokens": tokens,
        "notes": notes,
        "loss": nats / tokens,
        "bits_per_token": nats / tokens / math.log(2),
        "loss_per_note": nats / notes if notes else None,
        "unigram_entropy": unigram_entropy(counts.numpy()),
        "generated": {"pieces": len(generated), "seconds": seconds, "notes": sum(map(len, generated))},
        "reference": {"pieces": len(reference), "notes": sum(map(len, reference))},
        "music": compare_note_sets(generated, reference) if pitched else None,
    }


CONTROL_MODES = ("unasked", "header", "header+ban")


def evaluate_control(model, tokenizer, data_dir, split: str = "val", *, pieces: int = 32, seconds: float = 10.0,
                     sampler=SamplerConfig(), seed: int = 0, progress: bool = True) -> dict:
    """How a conditioning run follows a request: the first `pieces` held-out pieces each ask for
    their own header (instruments, tempo bin, key), and a piece of `seconds` is generated three ways:

        "unasked":    from `<start>` alone, the model choosing its own header (the baseline)
        "header":     the header as the prompt, nothing enforced: what the model learned from it
        "header+ban": the header, and other instruments banned (`conditioning.condition`)

    A mode's pieces are generated as one batch, piece i with seed + i in every mode. Returns {"split",
    "pieces", "seconds", "modes": {mode: {"notes": generated notes, "on_requested": their share on the requested instruments,
    "tempo_bins_off" / "tempo_bpm_off": mean absolute distance of the generated piece's main tempo
    (`MidiTokenizer.header_of` of the decoded file) from the requested one, in bins and BPM,
    "tempo_exact": share of pieces in the requested bin, "key_match": share of pieces whose estimated
    key is the requested one}}}.
    """
    if not tokenizer.config.conditioning:
        raise DataError("the run's tokenizer has no conditioning header: prepare its data with --conditioning")
    check_data_tokenizer(data_dir, split, tokenizer)
    data = TokenDataset(data_dir, split)
    requests = [tokenizer.read_header(doc) for doc in split_documents(data, max_tokens=len(data))][:pieces]
    if not requests or None in requests:
        raise DataError(f"{data_dir}/{split}: no piece with a conditioning header")
    modes = {}
    for mode in CONTROL_MODES:
        prompts, samplers = [], []
        for request in requests:
            prompt, piece_sampler = [tokenizer.START], sampler
            if mode != "unasked":
                bpm = None if request.tempo_bin is None else tokenizer.bin_tempo(request.tempo_bin)
                prompt, piece_sampler = condition(tokenizer, prompt, sampler, instruments=request.instruments, bpm=bpm,
                                                  key=request.key, ban=mode == "header+ban")
            prompts.append(prompt)
            samplers.append(piece_sampler)
        if progress:
            print(f"control: {mode}")
        pieces_ids = generate_music(model, tokenizer, prompts, seconds, samplers, seed=seed, progress=progress)
        notes = on_requested = 0
        tempo_bins, tempo_bpm, keys = [], [], []
        for request, ids in zip(requests, pieces_ids):
            midi = tokenizer.decode(ids)
            generated = midi_to_notes(midi)
            notes += len(generated)
            on_requested += sum(n.instrument in request.instruments for n in generated)
            got = tokenizer.header_of(midi)
            if request.tempo_bin is not None:
                tempo_bins.append(abs(got.tempo_bin - request.tempo_bin))
                tempo_bpm.append(abs(tokenizer.bin_tempo(got.tempo_bin) - tokenizer.bin_tempo(request.tempo_bin)))
            if request.key is not None:
                keys.append(got.key == request.key)
        modes[mode] = {
            "notes": notes,
            "on_requested": on_requested / notes if notes else None,
            "tempo_bins_off": float(np.mean(tempo_bins)) if tempo_bins else None,
            "tempo_bpm_off": float(np.mean(tempo_bpm)) if tempo_bpm else None,
            "tempo_exact": float(np.mean([b == 0 for b in tempo_bins])) if tempo_bins else None,
            "key_match": float(np.mean(keys)) if keys else None,
        }
    return {"split": split, "data": str(data_dir), "pieces": len(requests), "seconds": seconds, "modes": modes}


def save_results(results: dict, out_dir) -> Path:
    """Write eval.json into out_dir atomically; returns its path."""
    path = Path(out_dir) / RESULTS_FILE
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(results, indent=1))
    return path


def summary(results: dict) -> str:
    """A few lines for the terminal."""
    per_note = results["loss_per_note"]
    lines = [f"{results['split']}: {results['tokens']:,} tokens, {results['notes']:,} notes: "
             f"loss {results['loss']:.4f} nats/token ({results['bits_per_token']:.3f} bits), "
             f"{'n/a' if per_note is None else f'{per_note:.4f}'} nats/note; "
             f"unigram baseline {results['unigram_entropy']:.4f} nats/token"]
    music = results["music"]
    if music is None:
        lines.append(f"generated {results['generated']['pieces']} pieces without a pitched note")
    else:
        lines.append(f"generated vs held-out: pitch-class JS distance {music['pitch_class_js_distance']:.3f}, "
                     f"overlap {music['pitch_class_overlap']:.3f}")
        for key in ("note_density", "ioi_mean", "ioi_median", "ioi_std"):
            lines.append(f"  {key:<13} generated {music[key + '_generated']:.3f}  "
                         f"held-out {music[key + '_reference']:.3f}")
    return "\n".join(lines)

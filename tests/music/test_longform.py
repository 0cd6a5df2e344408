"""`music long-eval`: held-out loss by position with the state carried and reset, and the
segment statistics of a long piece, against independent computations."""
import json

import numpy as np
import pytest
import torch

from eaglefinch.cli import main
from eaglefinch.music.longform import carried_and_reset_losses, end_to_end, segment_stats
from eaglefinch.music.metrics import js_distance
from eaglefinch.music.run import MusicRun
from eaglefinch.music.tokenizer import Note
from eaglefinch.rwkv_core.data import TokenDataset
from eaglefinch.rwkv_core.heldout import losses_at


def test_carried_and_reset_losses_against_one_pass_and_fresh_windows(untrained_run, scale_data):
    model, _ = MusicRun.open(untrained_run).load()
    torch.manual_seed(0)
    with torch.no_grad():  # an untrained model ignores its state (zero output matrices): give it some
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    stream, ctx_len, windows = TokenDataset(scale_data, "val"), 16, 3
    carried, reset, n = carried_and_reset_losses(model, stream, ctx_len, windows, batch_size=2)
    length = ctx_len * windows
    assert n == (len(stream) - 1) // length and n >= 2
    starts = np.arange(n) * length
    # carried: each window in one pass, no chunks
    one_pass = losses_at(model, stream, starts, length, chunk_len=length)
    assert np.allclose(carried, one_pass.double().mean(0).numpy(), rtol=1e-5, atol=1e-6)
    # reset: each ctx_len piece of each window as a window of its own
    pieces = losses_at(model, stream, (starts[:, None] + np.arange(windows) * ctx_len).ravel(), ctx_len, ctx_len)
    assert np.allclose(reset, pieces.view(n, length).double().mean(0).numpy(), rtol=1e-5, atol=1e-6)
    assert np.allclose(carried[:ctx_len], reset[:ctx_len], rtol=1e-5, atol=1e-6)  # the first window is the same
    assert not np.allclose(carried[ctx_len:], reset[ctx_len:], rtol=1e-3)         # the state matters after it


def test_segment_stats_and_pieces_end_to_end():
    # 0-10 s: one C every second; 10-20 s: C and G, four notes a second; 20-25 s: a partial segment
    notes = [Note(0, 60, t, t + 0.5, 80) for t in range(10)]
    notes += [Note(0, 60 if i % 2 else 67, 10 + i / 4, 10.2 + i / 4, 80) for i in range(40)]
    notes += [Note(0, 62, 22.0, 25.0, 80)]
    reference = np.zeros(12)
    reference[0] = 1.0
    stats = segment_stats(notes, 10.0, reference)
    assert [s["start"] for s in stats] == [0.0, 10.0]
    assert [s["density"] for s in stats] == [1.0, 4.0]
    half = np.zeros(12)
    half[[0, 7]] = 0.5
    assert stats[0]["distance"] == 0.0 and stats[1]["distance"] == pytest.approx(js_distance(half, reference))
    assert segment_stats([Note(128, 36, 0.0, 2.0, 80)], 1.0, reference)[0]["distance"] is None  # drums only
    silent_end = segment_stats(notes, 10.0, reference, length=40.0)  # a piece asked to last 40 s
    assert [s["density"] for s in silent_end] == [1.0, 4.0, 0.1, 0.0] and silent_end[3]["distance"] is None

    pieces = [[Note(0, 60, 0.5, 2.0, 80)], [], [Note(0, 62, 0.0, 1.0, 80), Note(0, 64, 1.0, 3.0, 80)]]
    assert [(n.start, n.end) for n in end_to_end(pieces)] == [(0.5, 2.0), (2.0, 3.0), (3.0, 5.0)]


def test_long_eval_command(untrained_run, scale_data, tmp_path, capsys):
    args = ["music", "long-eval", "--checkpoint", str(untrained_run), "--data", str(scale_data), "--windows", "2",
            "--seconds", "3", "--segment", "1", "--out", str(tmp_path / "long")]
    assert main(args) == 0
    out = capsys.readouterr().out
    results = json.loads((tmp_path / "long" / "long_eval.json").read_text())  # the folder is made
    assert (tmp_path / "long" / "long_eval.png").stat().st_size > 10_000
    assert results["window_tokens"] == 2 * 64 and [s["start"] for s in results["loss"]["spans"]] == [0, 64]
    assert len(results["generated"]["segments"]) == 3 and results["heldout"]["pieces"] >= 1
    assert "state carried / reset every 64" in out and "wrote" in out
    assert main(args[:-2] + ["--segment", "4", "--out", str(tmp_path)]) == 1   # a segment longer than the piece
    assert "segment must be in (0, seconds = 3]" in capsys.readouterr().err

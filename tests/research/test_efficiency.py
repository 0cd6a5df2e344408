"""The efficiency experiment: its decode path continues the prefill exactly (the logits of prefill +
decode equal the whole sequence's), the slope fit, and the experiment through the CLI."""
import json
import math

import pytest
import torch

from eaglefinch.cli import main
from eaglefinch.research.efficiency import CPUMemory, decode, fitted_slope, prefill, state_bytes
from eaglefinch.research.transformer import build_model
from tests.research.fixtures import one_thread  # noqa: F401  (a fixture)


@pytest.mark.parametrize("arch", ["eagle", "finch", "transformer"])
def test_decode_after_prefill_continues_the_sequence(arch):
    torch.manual_seed(0)
    model = build_model(arch, vocab_size=30, n_layer=2, n_embd=32, head_size=16).double().eval()
    with torch.no_grad():
        for p in model.parameters():       # off the RWKV init (zero output projections), so logits vary
            p.add_(torch.randn_like(p) * 0.1)
        idx = torch.randint(0, 30, (1, 9))
        whole = model(idx)[0] if arch != "transformer" else model(idx)
        state = prefill(model, idx[:, :8])
        logits, _ = decode(model, idx[:, 8], state)
        again, _ = decode(model, idx[:, 8], state)   # the timing loop decodes from one state repeatedly
    torch.testing.assert_close(logits, whole[:, 8], rtol=0, atol=1e-9)
    torch.testing.assert_close(again, logits, rtol=0, atol=0)


def test_state_bytes_stay_constant_for_rwkv_and_grow_for_the_cache():
    sizes = {}
    for arch in ("finch", "transformer"):
        model = build_model(arch, vocab_size=30, n_layer=2, n_embd=32, head_size=16).eval()
        with torch.no_grad():
            sizes[arch] = [state_bytes(prefill(model, torch.zeros(1, T, dtype=torch.long))) for T in (4, 8)]
    # finch: per layer two shift vectors [C] and the WKV state [H, N, N], fp32
    assert sizes["finch"] == [2 * (2 * 32 + 2 * 16 * 16) * 4] * 2
    # transformer: keys and values [L, H, T, D], fp32
    assert sizes["transformer"] == [2 * 2 * 32 * T * 4 for T in (4, 8)]


def test_fitted_slope_reads_the_power_of_the_longer_lengths():
    lengths = [8, 16, 32, 64, 128, 256]
    assert fitted_slope(lengths, [T ** 2 for T in lengths]) == pytest.approx(2.0)
    # a constant overhead at short lengths is left out of the fit: the longer half is linear
    assert fitted_slope(lengths, [1000, 1000, 1000, 64, 128, 256]) == pytest.approx(1.0)
    assert math.isnan(fitted_slope(lengths, [None] * 6))


def test_cpu_peak_memory_sees_an_allocation():
    memory = CPUMemory()
    if not memory.available:
        pytest.skip("peak resident memory is measured on Linux with glibc only")
    before = memory.in_use()
    _, peak = memory.peak_during(lambda: torch.ones(16 * 2 ** 20 // 4).sum())
    assert 15 * 2 ** 20 < peak - before < 40 * 2 ** 20


@pytest.mark.usefixtures("one_thread")
def test_the_experiment_writes_its_results(tmp_path, capsys):
    out = tmp_path / "efficiency"
    code = main(["research", "efficiency", "--out", str(out), "--lengths", "8,16,32", "--width", "32", "--seeds", "1"])
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())["results"]
    rows = results["measurements"]
    assert {(r["arch"], r["T"]) for r in rows} == {(a, T) for a in ("eagle", "finch", "transformer") for T in (8, 16, 32)}
    assert all(r["prefill_s"] > 0 and r["decode_s"] > 0 and r["state_bytes"] > 0 for r in rows)
    assert set(results["slopes"]) == {"eagle", "finch", "transformer"}
    cache = [r["state_bytes"] for r in rows if r["arch"] == "transformer"]
    assert cache[1] == 2 * cache[0] and cache[2] == 4 * cache[0]
    assert results["slopes"]["transformer"]["state_bytes"] == pytest.approx(1.0)
    assert results["slopes"]["finch"]["state_bytes"] == pytest.approx(0.0, abs=1e-9)
    md = (out / "results.md").read_text()
    assert "| model | T | prefill ms |" in md and "Fitted slopes" in md and "![efficiency.png]" in md
    assert (out / "efficiency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_device_cuda_without_a_gpu_is_a_clear_error(tmp_path, capsys):
    assert main(["research", "efficiency", "--out", str(tmp_path / "out"), "--device", "cuda"]) == 1
    assert "--device cuda: no CUDA device is available" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

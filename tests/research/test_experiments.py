"""Each research experiment end to end through the command line, at a minimal setting (seconds):
results.json, results.md and the plots are written and well-formed. The scale's settings are
replaced by tiny ones here; the documented settings are timed in RESEARCH.md."""
import json
import math

import pytest

from eaglefinch.cli import main
from eaglefinch.music.abc import write_abc_data
from eaglefinch.music.corpus import abc_tunes
from eaglefinch.research import abc, ablation, longctx, lora_rank

PNG = b"\x89PNG\r\n\x1a\n"
VERDICTS = {"supported", "not supported", "not decidable at this scale"}
# the width is 128 so that the ablation's head sizes 32, 64 and 128 all fit
LM = {"model": dict(n_layer=1, n_embd=128, head_size=64, mix_lora_dim=4, decay_lora_dim=4, dim_ffn=64),
      "train": dict(max_steps=2, batch_size=2, ctx_len=16, lr_init=1e-3, lr_final=1e-4, warmup_steps=1),
      "data_mb": 0.1, "eval_tokens": 256}


def run_experiment(argv, out, capsys):
    assert main(["research", *argv, "--out", str(out), "--seeds", "2"]) == 0
    assert f"wrote {out / 'results.md'}" in capsys.readouterr().out
    report = json.loads((out / "results.json").read_text())
    assert set(report) == {"environment", "results", "plots"}
    env = report["environment"]
    assert env["experiment"] == argv[0] and env["seeds"] == 2 and env["scale"] == "tiny" and env["device"].startswith("cpu")
    assert env["commit"] and env["date"] and env["seconds"] > 0
    assert env["command"] == f"eaglefinch research {argv[0]} --out {out} --device cpu --scale tiny --seeds 2" + \
        "".join(f" {a}" for a in argv[1:])
    md = (out / "results.md").read_text()
    for name in report["plots"]:
        assert (out / name).read_bytes()[:8] == PNG
        assert f"]({name})" in md
    assert md.count("\n|---") == 1            # one table
    claims = report["results"]["claims"]
    assert claims and all(c["verdict"] in VERDICTS and c["claim"] in md for c in claims)
    return report["results"], md


def finite(values):
    return all(math.isfinite(v) for v in values)


def test_ablation(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(ablation.SCALES, "tiny", LM)
    results, md = run_experiment(["ablation"], tmp_path / "out", capsys)
    assert list(results["models"]) == list(ablation.MODELS)
    for name, r in results["models"].items():
        assert len(r["heldout_loss"]) == 2 and finite(r["heldout_loss"]) and f"| {name} |" in md
        assert r["params"] > 0 and len(r["curves"]) == 2
    models = results["models"]
    assert models["finch"]["params"] == models["finch-head32"]["params"] == models["finch-head128"]["params"]
    assert [models[n]["head_size"] for n in ("finch-head32", "finch", "finch-head128")] == [32, 64, 128]
    assert models["finch"]["vs_finch"]["mean"] == 0


def test_lora_rank(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(lora_rank.SCALES, "tiny", {**LM, "ranks": (0, 2, 4)})
    results, md = run_experiment(["lora-rank"], tmp_path / "out", capsys)
    for sweep, s in results["sweeps"].items():
        assert [p["rank"] for p in s["points"]] == [0, 2, 4]
        assert all(len(p["heldout_loss"]) == 2 and finite(p["heldout_loss"]) for p in s["points"])
        params = [p["params"] for p in s["points"]]
        assert params == sorted(params) and len(set(params)) == 3     # each rank adds parameters
    # rank 4 is the setting's in both sweeps: one model, the same numbers
    assert results["sweeps"]["decay"]["points"][2]["heldout_loss"] == results["sweeps"]["ddlerp"]["points"][2]["heldout_loss"]


def test_longctx(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(longctx.SCALES, "tiny", {**LM, "length_factor": 8})
    results, md = run_experiment(["longctx"], tmp_path / "out", capsys)
    assert results["ctx_len"] == 16 and results["length"] == 128
    assert results["spans"] == [[8, 16], [16, 32], [32, 64], [64, 128]]
    for r in results["models"].values():
        assert len(r["curves"]) == 2 and all(len(c) == 128 and finite(c) for c in r["curves"])
        for curve, short_curve, long, short in zip(r["curves"], r["short_curves"], r["long"], r["short"]):
            assert long[3] == pytest.approx(sum(curve[64:]) / 64)       # a span's loss is its positions' mean
            assert short[3] == pytest.approx(sum(short_curve[64:]) / 64)
            # positions 16-31 are read from the window's start both ways: the same context, the same loss
            assert short[1] == pytest.approx(long[1], abs=1e-5) and short[0] == long[0]
            assert short[3] != pytest.approx(long[3], abs=1e-5)           # positions 64-127: not the same context
    assert "loss at 64-127" in md and "64-127: all minus 17-32 bytes of context" in md


def test_abc(tmp_path, capsys, monkeypatch):
    data = tmp_path / "data"
    write_abc_data(data, abc_tunes()[:200], val_fraction=0.2)
    tiny = {"config": "abc-tiny", "model": dict(n_layer=1, n_embd=32, head_size=16, mix_lora_dim=4, decay_lora_dim=4,
                                                ctx_len=32),
            "train": dict(batch_size=2, ctx_len=32, val_batches=1, warmup_steps=1), "eval_tokens": 512}
    monkeypatch.setitem(abc.SCALES, "tiny", tiny)
    results, md = run_experiment(["abc", "--steps", "2", "--data", str(data)], tmp_path / "out", capsys)
    assert results["steps"] == 2 and results["config"]["model"]["n_embd"] == 32
    for arch in ("eagle", "finch"):
        bpb = results["models"][arch]["bits_per_byte"]
        assert len(bpb) == 2 and all(0 < b < 8 for b in bpb)     # 7 bits is a uniform guess over 128 ids
    assert results["models"]["eagle"]["params"] < results["models"]["finch"]["params"]


@pytest.mark.parametrize("argv, option", [
    (["ablation", "--steps", "0"], "--steps"),
    (["longctx", "--seeds", "0"], "--seeds"),
    (["lora-rank", "--scale", "huge"], "--scale"),
])
def test_bad_options_are_usage_errors(argv, option, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["research", *argv, "--out", str(tmp_path / "out")])
    assert exit.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and f"argument {option}: " in errors[0]
    assert not (tmp_path / "out").exists()


def test_abc_refuses_data_that_is_not_abc_bytes(tmp_path, capsys):
    assert main(["research", "abc", "--out", str(tmp_path / "out"), "--data", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("eaglefinch: error:") and "none" in err[0]
    assert not (tmp_path / "out" / "results.json").exists()

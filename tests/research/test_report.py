"""The statistics the experiments judge claims by (research/report.py), against hand-computed values."""
import argparse
import dataclasses
import json
import math

import pytest

from eaglefinch.research.report import claim, format_difference, markdown_table, paired_difference, resumable, t_95


def test_paired_difference_is_a_t_interval_of_the_per_seed_differences():
    # differences 1, 2, 3: mean 2, sample sd 1, 95% half-width t(2) / sqrt(3) = 4.303 / 1.732
    d = paired_difference([11.0, 12.0, 13.0], [10.0, 10.0, 10.0])
    assert d["mean"] == 2.0
    assert d["high"] - d["mean"] == pytest.approx(4.303 / math.sqrt(3))
    assert d["verdict"] == "within noise"          # the interval [-0.48, 4.48] holds 0
    d = paired_difference([1.0, 1.1, 0.9], [0.0, 0.0, 0.0])
    assert d["low"] == pytest.approx(1.0 - 4.303 * 0.1 / math.sqrt(3)) and d["verdict"] == "higher"
    assert paired_difference([0.0, 0.0, 0.1], [1.0, 1.0, 1.0])["verdict"] == "lower"
    assert paired_difference([1.0], [2.0]) == {"mean": -1.0, "low": None, "high": None, "verdict": "one seed"}
    with pytest.raises(ValueError):
        paired_difference([1.0, 2.0], [1.0])        # every seed needs both


def test_t_quantiles():
    assert t_95(1) == 12.706 and t_95(4) == 2.776
    assert t_95(11) == 2.228                         # between table entries: the wider interval
    assert t_95(100) == 1.96


def test_claims_take_the_direction_into_account():
    higher = [1.0, 1.1, 0.9], [0.0, 0.0, 0.0]
    assert claim("x", *higher, expect="higher")["verdict"] == "supported"
    assert claim("x", *higher, expect="lower")["verdict"] == "not supported"
    assert claim("x", [11.0, 12.0, 13.0], [10.0, 10.0, 10.0], "higher")["verdict"] == "not decidable at this scale"
    assert claim("x", [1.0], [0.0], "higher")["verdict"] == "not decidable at this scale"
    assert format_difference(paired_difference(*higher)) == "+1.000 [+0.752, +1.248] higher"


def test_markdown_table():
    assert markdown_table(["a", "b"], [[1, 0.123456], ["x", float("nan")]]) == \
        "| a | b |\n|---|---|\n| 1 | 0.1235 |\n| x | nan |\n"


def test_a_run_is_computed_once_per_options_and_setting_and_read_back_after(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"loss": 1.5, "curve": (1, 2), "nan": float("nan")}

    @dataclasses.dataclass
    class Setting:
        widths: tuple = (64, 128)

    args = argparse.Namespace(experiment="ablation", scale="tiny", steps=2, seeds=3, out=tmp_path, started={})
    first = resumable(args, tmp_path, "finch-seed0", compute, Setting())
    again = resumable(argparse.Namespace(**{**vars(args), "seeds": 5, "out": tmp_path / "x"}), tmp_path, "finch-seed0",
                      compute, Setting())
    assert len(calls) == 1 and first["curve"] == again["curve"] == [1, 2] and math.isnan(again["nan"])
    # other options that change what a run computes: computed again, and the file now holds the new record
    resumable(argparse.Namespace(**{**vars(args), "steps": 3}), tmp_path, "finch-seed0", compute, Setting())
    assert len(calls) == 2
    assert json.loads((tmp_path / "runs" / "finch-seed0.json").read_text())["options"]["steps"] == 3
    # the scale's settings edited (the same options): computed again too
    args.steps = 3
    resumable(args, tmp_path, "finch-seed0", compute, Setting(widths=(64,)))
    resumable(args, tmp_path, "finch-seed0", compute, Setting(widths=(64,)))
    assert len(calls) == 3

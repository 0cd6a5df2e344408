"""The launch settings of the chunked Triton WKV kernels (`WKVLaunch`): parsing (the syntax of pytest's
--wkv-launch and the benchmarks' --launch), immutability, and what a setting changes in a launch.
No kernel runs."""
import dataclasses

import pytest
import torch

pytest.importorskip("triton")

from eaglefinch.kernels.wkv_op.triton.launch import (DEFAULT_LAUNCH, WKVLaunch, launch_opts,  # noqa: E402
                                                     sub_block, whole_chunk_max_span)


def test_parse_applies_settings_over_a_base():
    assert WKVLaunch.parse("default") == WKVLaunch.parse("") == DEFAULT_LAUNCH
    launch = WKVLaunch.parse("max_span=-1+sub=32")
    assert (launch.max_span, launch.sub) == (-1, 32)
    assert dataclasses.replace(launch, max_span=96, sub=16) == DEFAULT_LAUNCH
    assert WKVLaunch.parse("fwd_out=8", base=launch) == dataclasses.replace(launch, fwd_out=8)
    with pytest.raises(ValueError, match="unknown launch settings"):
        WKVLaunch.parse("sub=32+nope=1")


def test_settings_cannot_change_in_place():
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_LAUNCH.sub = 32


def test_settings_reach_the_launch():
    launch = WKVLaunch.parse("fwd_out=2+sub=32+max_span=-1")
    assert launch_opts(launch, 64, "fwd_out")["num_warps"] == 2
    assert launch_opts(launch, 128, "fwd_out")["num_warps"] == 8     # larger heads: always 8
    assert sub_block(launch, 64) == 32 and sub_block(launch, 16) == 16
    with pytest.raises(ValueError, match="divides the chunk size"):
        sub_block(launch, 48)
    assert whole_chunk_max_span(launch, torch.bfloat16, "tf32", True) < 0
    assert whole_chunk_max_span(DEFAULT_LAUNCH, torch.bfloat16, "tf32", True) == 96
    assert whole_chunk_max_span(DEFAULT_LAUNCH, torch.float32, "tf32x3", False) == 16

"""Triton WKV kernels under the CPU interpreter (`TRITON_INTERPRET=1 pytest tests/triton`), at tiny
shapes, against the fp64 serial reference: forward, every gradient (r, k, v, w, u, initial state,
with a gradient on the final state too), ragged T, packed sequences, strong decays, decode.
Every call passes `poison=True`: kernel-written buffers start as NaN, so an element a kernel forgets to
write fails the comparison. Every chunked call passes the run's launch settings (`wkv_launch`, from
--wkv-launch), or settings of its own built from them."""
import dataclasses
import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET", "0") != "1" and not torch.cuda.is_available():
    pytest.skip("needs TRITON_INTERPRET=1 (set before triton is imported) or CUDA",
                allow_module_level=True)

from eaglefinch.kernels import wkv, wkv_reference                                 # noqa: E402
from eaglefinch.kernels.wkv_op.triton import (chunk, chunk_wkv, chunk_wkv_bwd, chunk_wkv_fwd,   # noqa: E402
                                              wkv_decode_)
from eaglefinch.kernels.wkv_op.triton.testing import (assert_close, check_fwd_bwd,             # noqa: E402
                                                      forward_outputs, make_inputs, rel_err)
from eaglefinch.kernels.wkv_op.triton.utils import dot_precision, new_buffer                  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"
TOL = {torch.float32: 1e-5, torch.float16: 2e-3}


def _chunk(chunk_size, launch, cu_seqlens=None):
    def fn(r, k, v, w, u, h0):
        return chunk_wkv(r, k, v, w, u, h0, cu_seqlens=cu_seqlens, chunk_size=chunk_size, poison=True,
                         launch=launch)
    return fn


def _assert_close(result, tol):
    assert_close(*result, tol)


def test_poison_argument_fills_nan():
    assert new_buffer((3,), torch.float32, "cpu", poison=True).isnan().all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("B,T,H,N,chunk,with_h0", [
    (2, 37, 1, 16, 32, True),    # ragged T: 1 full chunk + a partial one, 2 sub-blocks per chunk
    (1, 16, 2, 16, 16, False),   # exactly one chunk, no initial state
    (1, 1, 1, 16, 16, True),     # a single token
])
def test_chunk_finch(dtype, B, T, H, N, chunk, with_h0, wkv_launch):
    inputs = make_inputs(B, T, H, N, dtype, DEV, seed=T)
    h0 = torch.randn(B, H, N, N, device=DEV) if with_h0 else None
    _assert_close(check_fwd_bwd(_chunk(chunk, wkv_launch), inputs, h0), TOL[dtype])


def test_chunk_head64(wkv_launch):
    inputs = make_inputs(1, 20, 1, 64, torch.float32, DEV, seed=3)
    h0 = torch.randn(1, 1, 64, 64, device=DEV)
    _assert_close(check_fwd_bwd(_chunk(16, wkv_launch), inputs, h0), TOL[torch.float32])


def test_chunk_eagle_static_decay(wkv_launch):
    inputs = make_inputs(2, 21, 2, 16, torch.float32, DEV, static_w=True, seed=4)
    h0 = torch.randn(2, 2, 16, 16, device=DEV)
    assert inputs[3].shape == (2, 16)
    _assert_close(check_fwd_bwd(_chunk(16, wkv_launch), inputs, h0), TOL[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_chunk_strong_decay(dtype, wkv_launch):
    # log decays down to ~ -150 per step: nothing may overflow, and fp32 keeps fp32 accuracy (the
    # in-block exponents are direct sums of w, never differences of large prefix sums)
    inputs = make_inputs(1, 40, 1, 16, dtype, DEV, decay="strong", seed=5)
    h0 = torch.randn(1, 1, 16, 16, device=DEV)
    _assert_close(check_fwd_bwd(_chunk(32, wkv_launch), inputs, h0), 1e-5 if dtype == torch.float32 else 3e-3)


@pytest.mark.parametrize("decay", ["normal", "strong"])
def test_chunk_bf16_split_products(decay, wkv_launch):
    """bf16 inputs take the bf16 hi/lo split products (`_mm`, emulated in the interpreter).
    Against fp64 they must be as accurate as the fp32 dots of the same kernels (the interpreter's
    bf16 output rounding dominates both), and the fp32 outputs (final state, dh0) fp32-like."""
    inputs = make_inputs(1, 40, 1, 16, torch.bfloat16, DEV, decay=decay, seed=15)
    h0 = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(15)).to(DEV)
    plain, _ = check_fwd_bwd(_chunk(32, dataclasses.replace(wkv_launch, split=0)), inputs, h0)
    split, floors = check_fwd_bwd(_chunk(32, dataclasses.replace(wkv_launch, split=1)), inputs, h0)
    # bf16 outputs: both errors are dominated by their bf16 rounding; allow 20% over it, not more.
    # The fp32 outputs (ht, dh0) are bounded on their own below.
    worse = {k: (split[k], plain[k]) for k in split
             if k not in ("ht", "dh0") and not split[k] <= 1.2 * max(plain[k], floors[k])}
    assert not worse, f"split products less accurate than fp32 dots: {worse}"
    assert split["ht"] <= 3e-5 and split["dh0"] <= 3e-5, split


def test_chunk_weak_decay(wkv_launch):
    inputs = make_inputs(1, 40, 1, 16, torch.float32, DEV, decay="weak", seed=6)
    _assert_close(check_fwd_bwd(_chunk(32, wkv_launch), inputs, None), TOL[torch.float32])


@pytest.mark.parametrize("static_w", [False, True], ids=["finch", "eagle"])
def test_chunk_packed_sequences(static_w, wkv_launch):
    lens = [1, 20, 33, 16]
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32, device=DEV)
    inputs = make_inputs(1, sum(lens), 2, 16, torch.float32, DEV, static_w=static_w, seed=7)
    h0 = torch.randn(len(lens), 2, 16, 16, device=DEV)
    _assert_close(check_fwd_bwd(_chunk(16, wkv_launch, cu), inputs, h0, cu_seqlens=cu), TOL[torch.float32])


@pytest.mark.parametrize("sub", [32, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunk_larger_sub_blocks(sub, dtype, wkv_launch):
    """The launch setting `sub`: sub-blocks of 32 or 64 tokens (5 or 6 levels of in-block products) with
    ragged T and h0. fp32 against the oracle's tolerance; bf16 (split products, emulated) no less accurate
    than with the default 16-token sub-blocks (the interpreter's bf16 errors sit at about twice the
    rounding floor for every sub-block size: see test_chunk_bf16_split_products)."""
    inputs = make_inputs(1, 150, 1, 16, dtype, DEV, seed=10)
    h0 = torch.randn(1, 1, 16, 16, device=DEV)
    errs, floors = check_fwd_bwd(_chunk(64, dataclasses.replace(wkv_launch, sub=16)), inputs, h0)
    launch = dataclasses.replace(wkv_launch, sub=sub)
    errs_sub, _ = check_fwd_bwd(_chunk(64, launch), inputs, h0)
    if dtype == torch.float32:
        _assert_close((errs_sub, floors), TOL[dtype])
    else:
        worse = {k: (errs_sub[k], errs[k]) for k in errs if not errs_sub[k] <= 1.05 * errs[k] + 1e-7}
        assert not worse, worse
    with pytest.raises(ValueError, match="divides the chunk size"):
        chunk_wkv(*inputs, chunk_size=48, launch=launch)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_chunk_whole_chunk_and_level_paths(dtype, wkv_launch):
    """Each chunk takes the whole-chunk factored kernels unless its half-chunk decay exceeds the
    bound (then the level kernels): one call mixing both, ragged, with h0 and a final-state gradient,
    matches the oracle, and so does each path alone."""
    B, T, H, N, BT = 1, 150, 2, 16, 32
    inputs = make_inputs(B, T, H, N, dtype, DEV, decay="weak", seed=12)
    strong = make_inputs(B, T, H, N, dtype, DEV, decay="strong", seed=13)[3]
    rows = torch.arange(T, device=DEV)
    strong_rows = ((rows // BT) % 2 == 1)[None, :, None, None]          # chunks 1 and 3
    inputs[3] = torch.where(strong_rows, strong, inputs[3])
    h0 = torch.randn(B, H, N, N, device=DEV)
    tol = TOL[dtype]
    mixed = dataclasses.replace(wkv_launch, max_span=96)
    with forward_outputs() as calls:
        _assert_close(check_fwd_bwd(_chunk(BT, mixed), inputs, h0), tol)
    assert calls[0][3].tolist() == [[0, 0], [1, 1], [0, 0], [1, 1], [0, 0]]
    for limit, flag in ((-1, 1), (10 ** 9, 0)):      # every chunk on one path (weak decays only for 0)
        launch = dataclasses.replace(wkv_launch, max_span=limit)
        weak = make_inputs(B, T, H, N, dtype, DEV, decay="weak", seed=14)
        with forward_outputs() as calls:
            _assert_close(check_fwd_bwd(_chunk(BT, launch), weak, h0), tol)
        assert calls[0][3].eq(flag).all()


def test_chunk_scores_kept_only_for_a_backward(wkv_launch):
    """The forward stores its in-block scores for dv only when a backward can run; the output is the
    same either way, and the backward refuses to run without them."""
    r, k, v, w, u = make_inputs(1, 40, 1, 16, torch.float32, DEV, seed=9)
    with forward_outputs() as calls:
        chunk_wkv(r, k, v, w, u, chunk_size=32, launch=wkv_launch)        # nothing requires a gradient
        with torch.no_grad():                                           # no backward under no_grad
            chunk_wkv(r, k, v, w.requires_grad_(), u, chunk_size=32, launch=wkv_launch)
        chunk_wkv(r, k, v, w, u, chunk_size=32, launch=wkv_launch)        # w's gradient: a backward can run
    assert [out[4] is not None for out in calls] == [False, False, True]
    w.requires_grad_(False)

    launch = dataclasses.replace(wkv_launch, max_span=-1)    # every chunk through the level kernels
    lay = chunk._Layout(r, w, None, 32, launch)
    prec = dot_precision(r.dtype)
    o, ht, states, flags, scores = chunk_wkv_fwd(r, k, v, w, u, None, lay, prec, poison=True,
                                                  store_scores=True)
    o2, _, _, _, none = chunk_wkv_fwd(r, k, v, w, u, None, lay, prec, poison=True)
    assert none is None and torch.equal(o, o2)
    assert flags.eq(1).all()
    assert scores.shape == (40, 1, min(launch.sub, 32)) and not scores.isnan().any()
    with torch.no_grad():
        assert torch.equal(chunk_wkv(r, k, v, w, u, chunk_size=32, launch=launch)[0], o)
    with pytest.raises(ValueError, match="in-block scores"):
        chunk_wkv_bwd(r, k, v, w, u, states, flags, None, torch.ones_like(o), None, False, lay, prec)


def test_wkv_backend_triton_matches_reference(wkv_launch):
    r, k, v, w, u = make_inputs(1, 18, 1, 16, torch.float32, DEV, seed=8)
    s = torch.randn(1, 1, 16, 16, device=DEV)
    s_before = s.clone()
    o, ht = wkv(r, k, v, w, u, s, backend="triton", chunk_size=16, launch=wkv_launch)
    o_ref, ht_ref = wkv(r, k, v, w, u, s, backend="reference")
    assert torch.equal(s, s_before)
    assert rel_err(o, o_ref) < 1e-5 and rel_err(ht, ht_ref) < 1e-5


def test_wkv_auto_backend_on_cpu_is_torch():
    r, k, v, w, u = make_inputs(1, 5, 1, 16, torch.float32, "cpu", seed=9)
    o, _ = wkv(r, k, v, w, u)
    o_t, _ = wkv(r, k, v, w, u, backend="torch")
    assert torch.equal(o, o_t)


@pytest.mark.parametrize("T,static_w,use_idx", [(1, False, True), (3, False, False), (1, True, True)])
def test_decode_in_place(T, static_w, use_idx):
    B, H, N = 2, 2, 32
    r, k, v, w, u = make_inputs(B, T, H, N, torch.float32, DEV, static_w=static_w, seed=10 + T)
    slots = 5 if use_idx else B
    pool = torch.randn(slots, H, N, N, device=DEV)
    idx = torch.tensor([3, 0], device=DEV) if use_idx else None
    rows = [3, 0] if use_idx else [0, 1]
    before = pool.clone()
    o = wkv_decode_(r, k, v, w, u, pool, idx, poison=True)
    o_ref, ht_ref = wkv_reference(r, k, v, w, u, before[rows])
    assert rel_err(o, o_ref) < 1e-5
    assert rel_err(pool[rows], ht_ref) < 1e-5
    untouched = [i for i in range(slots) if i not in rows]
    assert torch.equal(pool[untouched], before[untouched])


def test_decode_fp16_strong_decay():
    r, k, v, w, u = make_inputs(3, 2, 1, 16, torch.float16, DEV, decay="strong", seed=11)
    state = torch.randn(3, 1, 16, 16, device=DEV)
    before = state.clone()
    o = wkv_decode_(r, k, v, w, u, state, poison=True)
    o_ref, ht_ref = wkv_reference(r, k, v, w, u, before)
    assert torch.isfinite(state).all()
    assert rel_err(o, o_ref) < 2e-3 and rel_err(state, ht_ref) < 1e-5

"""Triton WKV kernels on the GPU at real shapes (skipped without CUDA): bf16 and fp32 against the fp64
oracle, packed sequences, T = 65536 with strong decays, decode. Run on the device:
    python -m pytest -q tests/gpu tests/triton [--wkv-launch max_span=-1]
(`--wkv-launch` sets the launch settings every chunked call gets, the `wkv_launch` fixture: there,
every chunk on the level kernels.)
Kernel buffers are NaN-poisoned here too (`poison=True`), so an element a kernel misses fails."""
import dataclasses

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)

from eaglefinch.kernels import wkv_chunked, wkv_reference                    # noqa: E402
from eaglefinch.kernels.wkv_op.triton import chunk_wkv, wkv_decode_                 # noqa: E402
from eaglefinch.kernels.wkv_op.triton.testing import (assert_close, check_fwd_bwd,  # noqa: E402
                                                      forward_outputs, make_inputs, rel_err)

DEV = "cuda"
TOL = {torch.bfloat16: 2e-3, torch.float16: 2e-3, torch.float32: 1e-5}


def _state(n, seed=0):
    """A random initial state [n, 4, 64, 64] from a seeded CPU generator: the same in every run, so
    recorded errors compare across runs."""
    return torch.randn(n, 4, 64, 64, generator=torch.Generator().manual_seed(seed)).to(DEV)


def _fn(launch, cu=None):
    return lambda r, k, v, w, u, h0: chunk_wkv(r, k, v, w, u, h0, cu_seqlens=cu, poison=True, launch=launch)


def _assert_close(result, tol):
    errs, floors = result
    # the benchmark log records both: a 16-bit gradient passes at its rounding floor + margin
    print("errors:", {k: f"{e:.3g}" for k, e in errs.items()})
    print("rounding floors:", {k: f"{f:.3g}" for k, f in floors.items()})
    assert_close(*result, tol)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("static_w", [False, True])
def test_real_shape(dtype, static_w, wkv_launch):
    inputs = make_inputs(2, 1000, 4, 64, dtype, DEV, static_w=static_w, seed=1)
    if static_w and dtype == torch.float16:
        # Eagle's dw sums over all B*T tokens and overflows fp16: keep that parameter in fp32
        inputs[3] = inputs[3].float()
    h0 = _state(2)
    _assert_close(check_fwd_bwd(_fn(wkv_launch), inputs, h0), TOL[dtype])


@pytest.mark.parametrize("sub", [32, 64])
def test_larger_sub_blocks_bf16(sub, wkv_launch):
    """The launch setting `sub` (whole-chunk sub-blocks at 64) at the real shape, bf16 split products."""
    launch = dataclasses.replace(wkv_launch, sub=sub)
    inputs = make_inputs(2, 1000, 4, 64, torch.bfloat16, DEV, seed=1)
    h0 = _state(2)
    _assert_close(check_fwd_bwd(_fn(launch), inputs, h0), TOL[torch.bfloat16])


@pytest.mark.parametrize("max_span", [-1, 96], ids=["levels", "whole"])
def test_whole_chunk_and_level_paths_bf16(max_span, wkv_launch):
    """Both per-chunk paths at the real shape (bf16 split products, h0, final-state gradient), on
    inputs whose chunks alternate between normal and strong decays: with `max_span` = 96 the normal
    chunks take the whole-chunk kernels and the strong ones the level kernels, in one call."""
    launch = dataclasses.replace(wkv_launch, max_span=max_span)
    inputs = make_inputs(2, 1000, 4, 64, torch.bfloat16, DEV, seed=5)
    strong = make_inputs(2, 1000, 4, 64, torch.bfloat16, DEV, decay="strong", seed=6)[3]
    rows = torch.arange(1000, device=DEV)
    inputs[3] = torch.where(((rows // 64) % 3 == 1)[None, :, None, None], strong, inputs[3])
    h0 = _state(2)
    with forward_outputs() as calls:
        _assert_close(check_fwd_bwd(_fn(launch), inputs, h0), TOL[torch.bfloat16])
    flagged = calls[0][3].float().mean().item()
    print("share of chunks on the level kernels:", flagged)
    if max_span < 0:
        assert flagged == 1.0
    else:   # the strong chunks (5 of 16) and at most a few normal ones
        assert 0.25 < flagged < 0.45


def test_packed_sequences_bf16(wkv_launch):
    lens = [1, 63, 64, 65, 700, 3, 200]
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32, device=DEV)
    inputs = make_inputs(1, sum(lens), 4, 64, torch.bfloat16, DEV, seed=2)
    h0 = _state(len(lens))
    _assert_close(check_fwd_bwd(_fn(wkv_launch, cu), inputs, h0, cu_seqlens=cu), TOL[torch.bfloat16])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_long_sequence_strong_decay(dtype, wkv_launch):
    """T = 65536, log decays down to ~ -150 per step: finite everywhere, close to an fp64 chunked oracle."""
    B, T, H, N = 1, 65536, 2, 64
    r, k, v, w, u = make_inputs(B, T, H, N, dtype, DEV, decay="strong", seed=3)
    leaves = [x.clone().requires_grad_() for x in (r, k, v, w, u)]
    o, ht = chunk_wkv(*leaves, poison=True, launch=wkv_launch)
    do, dht = torch.randn_like(o), torch.randn_like(ht)
    torch.autograd.backward([o, ht], [do, dht])
    for x in [o, ht] + [x.grad for x in leaves]:
        assert torch.isfinite(x).all()
    ref = [x.detach().double().requires_grad_() for x in (r, k, v, w, u)]
    o_ref, ht_ref = wkv_chunked(*ref)
    torch.autograd.backward([o_ref, ht_ref], [do.double(), dht.double()])
    pairs = [(o, o_ref), (ht, ht_ref)] + [(a.grad, b.grad) for a, b in zip(leaves, ref)]
    names = ["o", "ht", "dr", "dk", "dv", "dw", "du"]
    errs = {n: rel_err(a, b) for n, (a, b) in zip(names, pairs)}
    floors = {n: rel_err(b.to(a.dtype), b) for n, (a, b) in zip(names, pairs)}
    # the bounds for every output and gradient, dw included
    _assert_close((errs, floors), TOL[dtype])


@pytest.mark.parametrize("B", [1, 64, 256])
def test_decode_bf16(B):
    H, N = 32, 64
    r, k, v, w, u = make_inputs(B, 1, H, N, torch.bfloat16, DEV, seed=4)
    pool = torch.randn(B + 3, H, N, N, device=DEV)
    idx = torch.randperm(B + 3, device=DEV)[:B]
    before = pool.clone()
    o = wkv_decode_(r, k, v, w, u, pool, idx, poison=True)
    o_ref, ht_ref = wkv_reference(r, k, v, w, u, before[idx])
    assert rel_err(o, o_ref) < 2e-3 and rel_err(pool[idx], ht_ref) < 1e-5
    mask = torch.ones(B + 3, dtype=torch.bool, device=DEV)
    mask[idx] = False
    assert torch.equal(pool[mask], before[mask])

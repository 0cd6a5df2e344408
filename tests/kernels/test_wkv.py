"""The chunked PyTorch WKV against the serial fp64 reference: outputs, states and every gradient."""
import pytest
import torch

from eaglefinch.kernels import wkv, wkv_chunked, wkv_reference


def make_inputs(B, T, H, N, decay, dtype=torch.float64, seed=0, static=False):
    g = torch.Generator().manual_seed(seed)
    r, k, v = (torch.randn(B, T, H, N, generator=g, dtype=dtype) for _ in range(3))
    # log decay = -exp(d); "strong" reaches -exp(5) ~ -148 per token, "slow" is 1 - w ~ 1e-4
    lo, hi = {"slow": (-9.0, -4.0), "typical": (-6.0, 1.0), "strong": (-1.0, 5.0)}[decay]
    shape = (H, N) if static else (B, T, H, N)
    w_log = -torch.exp(lo + (hi - lo) * torch.rand(*shape, generator=g, dtype=dtype))
    u = torch.randn(H, N, generator=g, dtype=dtype)
    state = torch.randn(B, H, N, N, generator=g, dtype=dtype)
    return r, k, v, w_log, u, state


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("T", [1, 5, 16, 37])
@pytest.mark.parametrize("decay", ["slow", "typical", "strong"])
@pytest.mark.parametrize("static", [False, True], ids=["finch", "eagle"])
def test_chunked_forward_fp32_matches_reference(T, decay, static):
    r, k, v, w_log, u, state = make_inputs(2, T, 2, 16, decay, static=static)
    out_ref, state_ref = wkv_reference(r, k, v, w_log, u, state)
    f32 = [x.float() for x in (r, k, v, w_log, u, state)]
    out, new_state = wkv(*f32, backend="torch")
    assert out.dtype == torch.float32 and new_state.dtype == torch.float32
    assert rel_err(out.double(), out_ref) <= 1e-5
    assert rel_err(new_state.double(), state_ref) <= 1e-5


def test_strong_decays_stay_finite_and_exact():
    """Per-token log decays down to -exp(10): exponents never overflow, and a huge early decay
    does not swamp the small later ones (segment sums, not differences of running totals)."""
    r, k, v, w_log, u, state = make_inputs(1, 40, 2, 8, "typical")
    w_log[:, ::7] = -torch.exp(torch.tensor(10.0, dtype=torch.float64))
    out_ref, state_ref = wkv_reference(r, k, v, w_log, u, state)
    f32 = [x.float().requires_grad_() for x in (r, k, v, w_log, u, state)]
    out, new_state = wkv_chunked(*f32)
    (out.sum() + new_state.sum()).backward()
    assert all(torch.isfinite(x.grad).all() for x in f32)
    assert rel_err(out.double(), out_ref) <= 1e-5
    assert rel_err(new_state.double(), state_ref) <= 1e-5


@pytest.mark.parametrize("static", [False, True], ids=["finch", "eagle"])
def test_chunked_gradients_match_reference(static):
    """All gradients, including the initial state's, with a loss on the final state too."""
    inputs = make_inputs(2, 21, 2, 8, "typical", static=static)
    g = torch.Generator().manual_seed(1)
    d_out = torch.randn(2, 21, 2, 8, generator=g, dtype=torch.float64)
    d_state = torch.randn(2, 2, 8, 8, generator=g, dtype=torch.float64)

    def grads(fn):
        xs = [x.clone().requires_grad_() for x in inputs]
        out, state = fn(*xs)
        ((out * d_out).sum() + (state * d_state).sum()).backward()
        return [x.grad for x in xs]

    for name, a, b in zip("r k v w_log u state".split(), grads(wkv_chunked), grads(wkv_reference)):
        assert rel_err(a, b) <= 1e-10, name


def test_chunked_gradcheck():
    xs = [x.requires_grad_() for x in make_inputs(1, 6, 1, 4, "typical")]
    assert torch.autograd.gradcheck(lambda *a: wkv_chunked(*a, chunk_size=4), xs)


@pytest.mark.parametrize("split", [1, 7, 16, 30])
def test_state_carries_across_calls(split):
    r, k, v, w_log, u, state = make_inputs(2, 31, 2, 8, "typical")
    out, final = wkv_chunked(r, k, v, w_log, u, state)
    out1, mid = wkv_chunked(r[:, :split], k[:, :split], v[:, :split], w_log[:, :split], u, state)
    out2, final2 = wkv_chunked(r[:, split:], k[:, split:], v[:, split:], w_log[:, split:], u, mid)
    assert rel_err(torch.cat([out1, out2], 1), out) <= 1e-12
    assert rel_err(final2, final) <= 1e-12


def test_given_state_is_not_modified_and_errors_are_clear():
    r, k, v, w_log, u, state = make_inputs(1, 3, 1, 4, "typical")
    before = state.clone()
    wkv(r, k, v, w_log, u, state)
    assert torch.equal(state, before)
    with pytest.raises(ValueError, match="u must be"):
        wkv(r, k, v, w_log, u[None], state)
    with pytest.raises(ValueError, match="unknown backend"):
        wkv(r, k, v, w_log, u, state, backend="nope")


def test_host_offsets_copies_each_offsets_tensor_once_and_again_after_a_change(monkeypatch):
    """A packed forward hands the same cu_seqlens to every layer: the host copy is made once (one
    device sync per forward); an in-place change makes a fresh one."""
    from eaglefinch.kernels import host_offsets
    cu = torch.tensor([0, 3, 7])
    assert host_offsets(cu) is cu   # already on the host: no copy
    copies = []
    monkeypatch.setattr(torch.Tensor, "cpu", lambda self: copies.append(1) or torch.tensor([0, 3, 7]))
    on_device = torch.tensor([0, 3, 7], device="meta")   # stands for a GPU tensor: its copies are counted
    first = host_offsets(on_device)
    assert host_offsets(on_device) is first and len(copies) == 1
    on_device.add_(0)   # an in-place change bumps the version
    second = host_offsets(on_device)
    assert second is not first and len(copies) == 2 and second.tolist() == [0, 3, 7]


def test_offsets_made_on_the_host_are_never_copied_back_and_chunk_tables_are_made_once_per_offsets(monkeypatch):
    """The engine's packed prefill makes its offsets on the host (`device_offsets`): host_offsets then
    reads the kept host copy, and the Triton path's chunk tables are built once for all layers."""
    from eaglefinch.kernels import device_offsets, host_offsets
    from eaglefinch.kernels.wkv_op.triton.chunk import prepare_chunks
    monkeypatch.setattr(torch.Tensor, "cpu", lambda self: pytest.fail("copied back to the host"))
    cu = device_offsets([3, 70, 1], "meta")   # stands for a GPU tensor
    assert cu.device.type == "meta" and host_offsets(cu).tolist() == [0, 3, 73, 74]
    monkeypatch.undo()
    host = torch.tensor([0, 3, 73, 74])
    first = prepare_chunks(host, 64)
    assert prepare_chunks(host, 64) is first            # the second layer reuses the first layer's tables
    offsets, table, n_chunks = first
    assert n_chunks == 4 and offsets.tolist() == [0, 1, 3]
    assert table.tolist() == [[0, 0], [1, 0], [1, 1], [2, 0]]   # (sequence, its chunk) of every chunk
    assert prepare_chunks(host, 32)[2] == 5             # another chunk size: other tables
    host[1] = 2; host[2] = 72                           # an in-place change: made again
    assert prepare_chunks(host, 64)[1].tolist() == [[0, 0], [1, 0], [1, 1], [2, 0]]
    host[2] = 66
    assert prepare_chunks(host, 64)[2] == 3

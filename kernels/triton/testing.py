"""Test helpers shared by tests/triton (CPU interpreter) and tests/gpu: inputs and the fp64 oracle."""
import torch

from ..reference import wkv_reference


def make_inputs(B, T, H, N, dtype, device, decay="normal", static_w=False, seed=0):
    """Random r, k, v, w_log, u in `dtype`. decay: "normal" (w_raw ~ N(-1, 1)), "strong"
    (w_raw up to ~ +5, i.e. log decays down to ~ -150 per step) or "weak" (near 0)."""
    g = torch.Generator().manual_seed(seed)
    r, k, v = (torch.randn(B, T, H, N, generator=g) for _ in range(3))
    shape = (H, N) if static_w else (B, T, H, N)
    raw = {"normal": torch.randn(shape, generator=g) - 1,
           "strong": torch.randn(shape, generator=g) * 2 + 1,
           "weak": torch.randn(shape, generator=g) - 6}[decay]
    w_log = -torch.exp(raw)
    u = torch.randn(H, N, generator=g) * 0.5
    return [x.to(device=device, dtype=dtype) for x in (r, k, v, w_log, u)]


def rel_err(a, b):
    """||a - b|| / ||b|| in fp64 (NaN if a holds any NaN)."""
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def reference_packed(r, k, v, w_log, u, state, cu_seqlens):
    """fp64 oracle for packed sequences: one serial run per sequence."""
    bounds = cu_seqlens.tolist()
    outs, states = [], []
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        w_i = w_log if w_log.dim() == 2 else w_log[:, a:b]
        o, s = wkv_reference(r[:, a:b], k[:, a:b], v[:, a:b], w_i, u,
                             None if state is None else state[i:i + 1])
        outs.append(o)
        states.append(s)
    return torch.cat(outs, 1), torch.cat(states, 0)


def check_fwd_bwd(fn, inputs, h0, cu_seqlens=None, seed=1):
    """Run `fn(r, k, v, w, u, h0) -> (o, ht)` and the fp64 oracle on the same inputs with a random
    output gradient and a random final-state gradient. Returns ({name: relative error}, {name: error
    of rounding the fp64 result to the output's dtype}) for o, ht and the gradients of r, k, v, w, u
    (and h0)."""
    leaves = list(inputs) + ([h0] if h0 is not None else [])
    ours = [x.detach().clone().requires_grad_() for x in leaves]
    ref = [x.detach().cpu().double().requires_grad_() for x in leaves]
    o, ht = fn(*ours[:5], ours[5] if h0 is not None else None)
    g = torch.Generator().manual_seed(seed)
    do = torch.randn(o.shape, generator=g).to(o.dtype)
    dht = torch.randn(ht.shape, generator=g)
    torch.autograd.backward([o, ht], [do.to(o.device), dht.to(ht.device)])
    h0_ref = ref[5] if h0 is not None else None
    if cu_seqlens is None:
        o_ref, ht_ref = wkv_reference(*ref[:5], h0_ref)
    else:
        o_ref, ht_ref = reference_packed(*ref[:5], h0_ref, cu_seqlens.cpu())
    torch.autograd.backward([o_ref, ht_ref], [do.double(), dht.double()])
    errs = {"o": rel_err(o, o_ref), "ht": rel_err(ht, ht_ref)}
    floors = {"o": rel_err(o_ref.to(o.dtype), o_ref), "ht": 0.0}
    for name, a, b in zip(["dr", "dk", "dv", "dw", "du", "dh0"], ours, ref):
        errs[name] = rel_err(a.grad, b.grad)
        floors[name] = rel_err(b.grad.to(a.grad.dtype), b.grad)
    return errs, floors


def assert_close(errs, floors, tol, margin=5e-4):
    """Every error <= tol, or (for low-precision outputs) <= the error of merely rounding the exact
    result to the output dtype plus `margin`. NaN fails."""
    bad = {k: e for k, e in errs.items() if not (e <= tol or e <= floors[k] + margin)}
    assert not bad, f"errors over {tol}: {bad} (all: {errs}; rounding floors: {floors})"

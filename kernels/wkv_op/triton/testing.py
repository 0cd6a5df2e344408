"""Test helpers shared by tests/triton (CPU interpreter), tests/gpu and tests/kernels: inputs, the fp64
oracle, the forward's outputs as the autograd function sees them (`forward_outputs`), and compiling the
kernels for a GPU on a machine without one (`recorded_launches`, `compile_launch`)."""
import contextlib

import torch

from ..naive import wkv_reference
from .launch import DEFAULT_LAUNCH


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


@contextlib.contextmanager
def forward_outputs():
    """Within the block, every `chunk_wkv_fwd` call (the host function behind `chunk_wkv`) appends
    its outputs (o, ht, states, flags, scores) to the yielded list."""
    from . import chunk
    calls, original = [], chunk.chunk_wkv_fwd

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append(out)
        return out

    chunk.chunk_wkv_fwd = spy
    try:
        yield calls
    finally:
        chunk.chunk_wkv_fwd = original


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


# Compiling without a GPU. The interpreter checks the kernels' arithmetic, but it accepts code the GPU
# compiler rejects (a tl.constexpr assigned twice in a loop, say) and never runs the compiler's layout
# and register allocation passes. Recording the launches of the real host functions and compiling each
# one for a Hopper target catches those on a CPU machine (ptxas ships in the triton wheel).

_SIGNATURE_DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32",
                     torch.int32: "i32", torch.int64: "i64"}
_LAUNCH_OPTIONS = ("num_warps", "num_stages", "maxnreg")


@contextlib.contextmanager
def recorded_launches():
    """Within the block, `kernel[grid](...)` of every @triton.jit kernel records (kernel, args,
    kwargs) in the yielded list instead of launching. Needs real JIT kernels (not the interpreter)."""
    from triton.runtime.jit import JITFunction
    launches = []
    original = JITFunction.__getitem__
    JITFunction.__getitem__ = lambda fn, grid: (lambda *args, **kwargs: launches.append((fn, args, kwargs)))
    try:
        yield launches
    finally:
        JITFunction.__getitem__ = original


def compile_launch(fn, args, kwargs, arch=90):
    """Compile one recorded launch for an NVIDIA GPU of compute capability `arch` (no GPU needed):
    tensors become pointers of their dtype, None and constexpr parameters constants, and, as the JIT
    specializes them, pointers and integers that are multiples of 16 carry that divisibility and
    integers equal to 1 become constants. Returns Triton's compiled kernel (its `asm` holds the PTX
    and the cubin); raises the compiler's error."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    kwargs = dict(kwargs)
    options = {key: kwargs.pop(key) for key in _LAUNCH_OPTIONS if key in kwargs}
    values = dict(zip(fn.arg_names, args)) | kwargs
    signature, constants, attrs = {}, {}, {}
    divisible = [["tt.divisibility", 16]]
    for i, p in enumerate(fn.params):
        val = values[p.name]
        if p.is_constexpr or val is None or (isinstance(val, int) and val == 1):
            signature[p.name], constants[p.name] = "constexpr", val
        elif isinstance(val, torch.Tensor):
            signature[p.name] = "*" + _SIGNATURE_DTYPES[val.dtype]
            attrs[(i,)] = divisible   # torch's allocations are aligned
        elif isinstance(val, int):
            signature[p.name] = "i64" if abs(val) >= 2 ** 31 else "i32"
            if val % 16 == 0:
                attrs[(i,)] = divisible
        else:
            raise TypeError(f"{fn.__name__}: no signature type for {p.name} = {val!r}")
    return triton.compile(ASTSource(fn, signature, constants, attrs), target=GPUTarget("cuda", arch, 32),
                          options=options)


def wkv_launches(dtype=torch.bfloat16, N=64, static_w=False, packed=False, launch=DEFAULT_LAUNCH):
    """The kernel launches (recorded, not run) of one `chunk_wkv` forward and backward with an
    initial and a final state under the launch settings `launch`, at a small shape with CPU tensors,
    and of one decode step into a state pool with a slot index. The public entry points choose
    precision, split products and launch options exactly as they do on the GPU."""
    from .chunk import chunk_wkv
    from .recurrent import wkv_decode_
    B, T, H = (1, 150, 2) if packed else (2, 128, 2)
    inputs = make_inputs(B, T, H, N, dtype, "cpu", static_w=static_w)
    cu = torch.tensor([0, 40, 150], dtype=torch.int32) if packed else None
    leaves = [x.requires_grad_() for x in inputs + [torch.zeros(2, H, N, N)]]
    with recorded_launches() as launches:
        # outputs unwritten: only the launches matter
        o, ht = chunk_wkv(*leaves, cu_seqlens=cu, launch=launch)
        torch.autograd.backward([o, ht], [torch.zeros_like(o), torch.zeros_like(ht)])
        r, k, v, w, u = inputs
        wkv_decode_(r[:1, :1], k[:1, :1], v[:1, :1], w if static_w else w[:1, :1], u,
                    torch.zeros(4, H, N, N), torch.tensor([2]))
    return launches

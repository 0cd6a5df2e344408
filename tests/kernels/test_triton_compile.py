"""Every Triton kernel launch of a training step and a decode step, compiled for an H100 (sm_90) on
this CPU machine: the real host functions run with CPU tensors, their launches are recorded instead of
run, and each is compiled by Triton's GPU compiler (ptxas included). The interpreter tests
(tests/triton) check the arithmetic; this checks that the same code builds for the GPU, with the
launch options (warps, register caps) the host functions choose."""
import pytest
import torch

triton = pytest.importorskip("triton")

from eaglefinch.kernels.wkv_op.triton import WKVLaunch                              # noqa: E402
from eaglefinch.kernels.wkv_op.triton.testing import compile_launch, wkv_launches   # noqa: E402
from eaglefinch.kernels.wkv_op.triton.utils import interpreting                     # noqa: E402

if interpreting():
    pytest.skip("the interpreter replaces the JIT kernels: run without TRITON_INTERPRET",
                allow_module_level=True)
if "nvidia" not in triton.backends.backends:
    pytest.skip("this triton has no NVIDIA backend", allow_module_level=True)


def _ptxas_runs():
    """The ptxas in the triton wheel (or TRITON_PTXAS_PATH) starts on this machine."""
    import os
    import subprocess
    from pathlib import Path
    ptxas = os.environ.get("TRITON_PTXAS_PATH") or Path(triton.__file__).parent / "backends/nvidia/bin/ptxas"
    try:
        return subprocess.run([str(ptxas), "--version"], capture_output=True).returncode == 0
    except OSError:
        return False


if not _ptxas_runs():
    pytest.skip("triton's ptxas does not run on this machine", allow_module_level=True)

KERNELS = {"_fwd_state_kernel", "_fwd_out_kernel", "_bwd_state_kernel", "_bwd_dr_kernel",
           "_bwd_dkdv_kernel", "_decode_kernel"}
WHOLE_CHUNK_KERNELS = {"_fwd_whole_kernel", "_bwd_whole_kernel"}


# whole: the call launches the whole-chunk kernels (`max_span` >= 0 and exact enough dots: bf16 split
# products or fp32's tf32x3, not fp16's plain tf32)
@pytest.mark.parametrize("dtype,N,static_w,packed,launch,whole", [
    (torch.bfloat16, 64, False, False, "default", True),   # the training default: bf16 split products
    (torch.float32, 64, True, True, "default", True),      # Eagle, packed sequences, tf32x3 products
    (torch.float16, 128, False, False, "default", False),  # a larger head: 8 warps; plain tf32: levels only
    (torch.bfloat16, 64, False, False, "max_span=-1", False),   # the level kernels alone
    (torch.float32, 64, True, True, "max_span=-1", False),
    (torch.bfloat16, 64, False, False, "max_span=-1+sub=64", False),   # M = 64 levels
], ids=["bf16-finch", "fp32-eagle-packed", "fp16-N128", "bf16-levels", "fp32-eagle-packed-levels",
        "bf16-levels-sub64"])
def test_kernels_compile_for_hopper(dtype, N, static_w, packed, launch, whole):
    launches = wkv_launches(dtype, N, static_w, packed, WKVLaunch.parse(launch))
    expected = KERNELS | (WHOLE_CHUNK_KERNELS if whole else set())
    assert {fn.__name__ for fn, _, _ in launches} == expected
    for fn, args, kwargs in launches:
        compiled = compile_launch(fn, args, kwargs)
        assert compiled.metadata.num_warps == kwargs["num_warps"]
        assert compiled.metadata.maxnreg == kwargs.get("maxnreg")
        assert compiled.asm["cubin"], fn.__name__

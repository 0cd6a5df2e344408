"""Registers, spills, shared memory and synchronisation of every WKV kernel as compiled for an NVIDIA
GPU, on any machine (no GPU needed): the launches of a training step and a decode step are recorded and
compiled for the target (kernels/wkv_op/triton/testing.py); the cubin is read by the cuobjdump that
ships with triton, and the Triton GPU IR and PTX are counted: dots (and how many are wgmma), layout
conversions, shared-memory buffers, block-wide barriers (bar.sync) and exp2 instructions, per program.

    python bench/kernel_resources.py [--arch 90] [--dtype bf16] [--N 64] [--launch maxnreg_bwd_dkdv=168+...]

Registers decide occupancy (65,536 per SM: at 4 warps, 255 per thread fit 2 blocks, 168 fit 3);
a spill stack > 0 means spills; shared is Triton's dynamic shared memory. Loops over chunks in the
scans are not unrolled, so their counts are per loop body; the chunk kernels' sub-block loops are.
The numbers belong to the installed Triton version (the device's may differ). Timing still needs the
GPU (bench/wkv.py).
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch    # noqa: E402
import triton   # noqa: E402

from eaglefinch.kernels.wkv_op.triton import WKVLaunch                              # noqa: E402
from eaglefinch.kernels.wkv_op.triton.testing import compile_launch, wkv_launches   # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resource_usage(cubin):
    """{"REG": registers per thread, "STACK": spill stack bytes, ...} from cuobjdump."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        out = subprocess.run([str(tool), "--dump-resource-usage", path], capture_output=True,
                             text=True, check=True).stdout
    return {key: int(val) for key, val in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", out)}


def code_counts(compiled):
    """Dots, wgmma dots, layout conversions, shared-memory buffers, barriers and exp2 in the code."""
    ttgir, ptx = compiled.asm["ttgir"], compiled.asm["ptx"]
    return {"dots": len(re.findall(r"tt\.dot |warp_group_dot ", ttgir)),
            "wgmma": len(re.findall(r"warp_group_dot ", ttgir)),
            "converts": ttgir.count("ttg.convert_layout"), "smem": ttgir.count("ttg.local_alloc"),
            "barriers": ptx.count("bar.sync"), "ex2": ptx.count("ex2.approx")}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, default=90, help="compute capability (90: H100/H200)")
    ap.add_argument("--dtype", choices=DTYPES, default="bf16")
    ap.add_argument("--N", type=int, default=64, help="head size")
    ap.add_argument("--launch", default="default",
                    help="launch settings NAME=VALUE+... over the defaults (WKVLaunch)")
    args = ap.parse_args()
    try:
        launch = WKVLaunch.parse(args.launch)
    except ValueError as exc:
        raise SystemExit(f"--launch: {exc}")
    print(f"sm_{args.arch}, {args.dtype}, N = {args.N}, triton {triton.__version__}\n")
    print("| kernel | warps | maxnreg | registers | spill stack B | shared B | dots (wgmma) | layout "
          "conversions | smem buffers | bar.sync | ex2 |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for fn, fargs, kwargs in wkv_launches(DTYPES[args.dtype], args.N, launch=launch):
        compiled = compile_launch(fn, fargs, kwargs, arch=args.arch)
        use, n = resource_usage(compiled.asm["cubin"]), code_counts(compiled)
        print(f"| {fn.__name__} | {kwargs['num_warps']} | {kwargs.get('maxnreg') or '-'} | "
              f"{use['REG']} | {use['STACK']} | {compiled.metadata.shared} | {n['dots']} ({n['wgmma']}) | "
              f"{n['converts']} | {n['smem']} | {n['barriers']} | {n['ex2']} |", flush=True)


if __name__ == "__main__":
    main()

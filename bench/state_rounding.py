"""How much would storing the per-chunk WKV states in 16 bits cost in accuracy? An fp64 chunked forward
in which only the state stored at each chunk start (what the output kernel reads) is rounded to fp32,
bf16 or fp16, while the sequential scan keeps its exact state; prints ||o - o_exact|| / ||o_exact||.
CPU only, a few seconds:

    python bench/state_rounding.py [--T 1024] [--H 4]

It answers a design question for the Triton kernels (BENCHMARKS.md: the fp32 chunk states are 268 MB of
traffic per pass at the headline shape), not a test: the gradients are not covered.
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from eaglefinch.kernels import wkv_reference                 # noqa: E402
from eaglefinch.kernels.wkv_op.triton.testing import make_inputs   # noqa: E402

ROUNDINGS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def chunked_forward(r, k, v, w, u, chunk, stored_dtype=None):
    """o of the WKV recurrence in fp64 (`wkv_reference` chunk by chunk): each chunk's output starts
    from the stored state (rounded to stored_dtype when given), while the state carried to the next
    chunk stays exact."""
    S, outs = None, []
    for c in range(0, r.shape[1], chunk):
        xs = [x[:, c:c + chunk] for x in (r, k, v, w)]
        o, S_next = wkv_reference(*xs, u, S)
        if S is not None and stored_dtype is not None:   # only then does the read state differ
            o = wkv_reference(*xs, u, S.to(stored_dtype).double())[0]
        outs.append(o)
        S = S_next
    return torch.cat(outs, dim=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--T", type=int, default=1024)
    ap.add_argument("--H", type=int, default=4)
    ap.add_argument("--chunk", type=int, default=64)
    args = ap.parse_args()
    print(f"B1 T{args.T} H{args.H} N64, bf16 inputs, chunk {args.chunk}: relative error of o from "
          "rounding only the stored chunk states")
    print("| decay | " + " | ".join(ROUNDINGS) + " |\n|---|" + "---|" * len(ROUNDINGS))
    for decay in ("normal", "strong"):
        xs = make_inputs(1, args.T, args.H, 64, torch.bfloat16, "cpu", decay=decay, seed=1)
        xs = [x.double() for x in xs]
        exact = chunked_forward(*xs, args.chunk)
        errs = [((chunked_forward(*xs, args.chunk, dt) - exact).norm() / exact.norm()).item()
                for dt in ROUNDINGS.values()]
        print(f"| {decay} | " + " | ".join(f"{e:.1e}" for e in errs) + " |", flush=True)


if __name__ == "__main__":
    main()

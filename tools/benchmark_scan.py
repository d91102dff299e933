"""Time the pure-PyTorch selective scan against two per-token loops, and against mamba-ssm's
kernel where CUDA and mamba-ssm are available.

The two loops: ours (`selective_scan_ref`, the tests' oracle: each token's decay computed in the
loop, state (batch, d_inner, d_state) updated in cache) and mamba-ssm's reference algorithm
(`vss.benchmark.scan.mamba_reference_loop`: every token's decay and input materialised first as
(batch, d_inner, L, d_state) tensors, then one update and one einsum per token), the loop a
mamba-ssm user runs without the CUDA kernel.

The default size is one TV3S training scan: 9 windows (a 60x60 map cut into 20x20 windows),
each a sequence of 4 frames x 400 tokens; d_inner 512, d_state 16. Times are the best of
--repeats runs, wall-clock and process CPU time (the CPU may be shared).

    python tools/benchmark_scan.py [--batch 9 --length 1600 --backward --threads 2]
"""
import argparse
import sys

import vss  # noqa: F401  (first: its warnings filter quiets fvcore's torch.jit deprecation)

import torch

from vss.benchmark.scan import compare, mamba_inputs, mamba_reference_loop
from vss.modeling.tv3s.scan import _mamba_selective_scan, selective_scan, selective_scan_ref, selective_scan_torch
from vss.engine.cli import add_debug_argument, run_main


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=9, help="number of windows scanned together")
    parser.add_argument("--d-inner", type=int, default=512)
    parser.add_argument("--d-state", type=int, default=16)
    parser.add_argument("--length", type=int, default=1600, help="tokens per sequence (frames x window area)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backward", action="store_true", help="time forward + backward")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    add_debug_argument(parser)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    size = (args.batch, args.d_inner, args.d_state, args.length)
    mode = "forward + backward" if args.backward else "forward"
    print(f"batch {size[0]}, d_inner {size[1]}, d_state {size[2]}, L {size[3]}; {mode}, best of {args.repeats}")
    print(f"CPU, {torch.get_num_threads()} threads:")
    cpu_inputs = mamba_inputs(*size, "cpu", args.backward)
    loops = [("per-token loop (ours)", selective_scan_ref)]
    if args.backward:
        # each token's slice of the materialised decays gets a zero-filled full-size gradient
        print("  (mamba-ssm's reference loop left out: its backward takes many minutes at this size)")
    else:
        loops.append(("per-token loop (mamba-ssm ref)", mamba_reference_loop))
    compare(loops, "chunked (pure PyTorch)", selective_scan_torch, cpu_inputs, args)

    if not torch.cuda.is_available():
        print("CUDA: not available, kernel not timed")
    elif _mamba_selective_scan() is None:
        print("CUDA: mamba-ssm not installed, kernel not timed")
    else:
        print(f"CUDA ({torch.cuda.get_device_name()}):")
        cuda_inputs = mamba_inputs(*size, "cuda", args.backward)
        compare([("chunked (pure PyTorch)", selective_scan_torch)], "mamba-ssm kernel", selective_scan, cuda_inputs, args)


if __name__ == "__main__":
    run_main(main, "benchmark_scan.py", debug="--debug" in sys.argv[1:])

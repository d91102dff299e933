"""Time the pure-PyTorch selective scan against the per-token reference loop, and against
mamba-ssm's kernel where CUDA and mamba-ssm are available.

The default size is one TV3S training scan: 9 windows (a 60x60 map cut into 20x20 windows),
each a sequence of 4 frames x 400 tokens; d_inner 512, d_state 16. Times are the best of
--repeats runs, wall-clock and process CPU time (the CPU may be shared).

    python tools/benchmark_scan.py [--batch 9 --length 1600 --backward --threads 2]
"""
import argparse
import math
import time

import torch

from vss.modeling.tv3s.scan import _mamba_selective_scan, selective_scan, selective_scan_ref, selective_scan_torch


def mamba_inputs(batch, d_inner, d_state, length, device, requires_grad):
    """What a freshly initialised Mamba layer hands its scan (steps in about [1e-3, 0.1])."""
    g = torch.Generator().manual_seed(0)
    steps = torch.exp(torch.rand(d_inner, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    tensors = dict(
        u=torch.randn(batch, d_inner, length, generator=g),
        delta=0.1 * torch.randn(batch, d_inner, length, generator=g),
        A=-torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1),
        B=torch.randn(batch, d_state, length, generator=g),
        C=torch.randn(batch, d_state, length, generator=g),
        D=torch.ones(d_inner),
        z=torch.randn(batch, d_inner, length, generator=g),
        delta_bias=steps + torch.log(-torch.expm1(-steps)),  # softplus(delta_bias) = steps
    )
    return {k: v.to(device).requires_grad_(requires_grad) for k, v in tensors.items()}


def run(scan, inputs, backward):
    y, final = scan(**inputs, delta_softplus=True, return_final_state=True)
    if backward:
        (y.sum() + final.sum()).backward()
    return y.detach(), final.detach()


def timed(scan, inputs, backward):
    """(wall seconds, process CPU seconds, outputs) of one run."""
    sync = torch.cuda.synchronize if inputs["u"].is_cuda else (lambda: None)
    sync()
    wall, cpu = time.perf_counter(), time.process_time()
    out = run(scan, inputs, backward)
    sync()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def compare(name_a, scan_a, name_b, scan_b, inputs, args):
    # Alternating the two runs exposes both to the same load on a shared machine;
    # CPU time (summed over threads) is the steadier figure there.
    best = {name_a: [math.inf, math.inf], name_b: [math.inf, math.inf]}
    outputs = {}
    for _ in range(args.repeats):
        for name, scan in ((name_a, scan_a), (name_b, scan_b)):
            wall, cpu, outputs[name] = timed(scan, inputs, args.backward)
            best[name] = [min(best[name][0], wall), min(best[name][1], cpu)]
    for name, (wall, cpu) in best.items():
        print(f"  {name:<24s} {wall * 1e3:9.1f} ms wall {cpu * 1e3:9.1f} ms CPU")
    (y_a, final_a), (y_b, final_b) = outputs[name_a], outputs[name_b]
    diff_y = ((y_a.float() - y_b.float()).abs().max() / y_b.float().abs().max()).item()
    diff_state = ((final_a - final_b).abs().max() / final_b.abs().max()).item()
    print(
        f"  speed-up {best[name_a][0] / best[name_b][0]:.1f}x wall, {best[name_a][1] / best[name_b][1]:.1f}x CPU;"
        f" max rel. difference: y {diff_y:.1e}, final state {diff_state:.1e}"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=9, help="number of windows scanned together")
    parser.add_argument("--d-inner", type=int, default=512)
    parser.add_argument("--d-state", type=int, default=16)
    parser.add_argument("--length", type=int, default=1600, help="tokens per sequence (frames x window area)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backward", action="store_true", help="time forward + backward")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    size = (args.batch, args.d_inner, args.d_state, args.length)
    mode = "forward + backward" if args.backward else "forward"
    print(f"batch {size[0]}, d_inner {size[1]}, d_state {size[2]}, L {size[3]}; {mode}, best of {args.repeats}")
    print(f"CPU, {torch.get_num_threads()} threads:")
    cpu_inputs = mamba_inputs(*size, "cpu", args.backward)
    compare(
        "per-token reference", selective_scan_ref, "chunked (pure PyTorch)", selective_scan_torch, cpu_inputs, args
    )

    if not torch.cuda.is_available():
        print("CUDA: not available, kernel not timed")
    elif _mamba_selective_scan() is None:
        print("CUDA: mamba-ssm not installed, kernel not timed")
    else:
        print(f"CUDA ({torch.cuda.get_device_name()}):")
        cuda_inputs = mamba_inputs(*size, "cuda", args.backward)
        compare("chunked (pure PyTorch)", selective_scan_torch, "mamba-ssm kernel", selective_scan, cuda_inputs, args)


if __name__ == "__main__":
    main()

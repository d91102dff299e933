"""The selective scan's timing against per-token loops and mamba-ssm's kernel: inputs as a fresh
Mamba layer makes them, mamba-ssm's reference loop written out, best-of-N timing
(tools/benchmark_scan.py is its command line).
"""
import math
import time

import torch

from ..modeling.tv3s.scan import _add_skip, _effective_delta, _gate

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


def mamba_reference_loop(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_final_state=False
):
    """mamba-ssm's reference selective scan algorithm, written out for timing (zero initial state)."""
    delta = _effective_delta(delta, delta_bias, delta_softplus)
    decays = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    drives = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        h = decays[:, :, t] * h + drives[:, :, t]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, t]))
    y = _gate(_add_skip(torch.stack(ys, 2), u, D), z)
    return (y, h) if return_final_state else y


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


def compare(baselines, name, scan, inputs, args):
    """Time `scan` and each (name, scan) of `baselines`; print the speed-up of `scan` over each."""
    # Alternating the runs exposes all to the same load on a shared machine;
    # CPU time (summed over threads) is the steadier figure there.
    runs = baselines + [(name, scan)]
    best = {n: [math.inf, math.inf] for n, _ in runs}
    outputs = {}
    for _ in range(args.repeats):
        for n, s in runs:
            wall, cpu, outputs[n] = timed(s, inputs, args.backward)
            best[n] = [min(best[n][0], wall), min(best[n][1], cpu)]
    for n, (wall, cpu) in best.items():
        print(f"  {n:<28s} {wall * 1e3:9.1f} ms wall {cpu * 1e3:9.1f} ms CPU")
    y, final = outputs[name]
    for n, _ in baselines:
        y_b, final_b = outputs[n]
        diff_y = ((y.float() - y_b.float()).abs().max() / y_b.float().abs().max()).item()
        diff_state = ((final - final_b).abs().max() / final_b.abs().max()).item()
        print(
            f"  {name} vs {n}: {best[n][0] / best[name][0]:.1f}x wall, {best[n][1] / best[name][1]:.1f}x CPU;"
            f" max rel. difference: y {diff_y:.1e}, final state {diff_state:.1e}"
        )

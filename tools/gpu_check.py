#!/usr/bin/env python
"""The GPU check behind `make test-gpu`: every CUDA path of vss run and compared, in one JSON report.

On a machine with CUDA, in this order (each check is recorded even when an earlier one failed):

1. kernels: mamba-ssm's selective scan and causal-conv1d's conv against the pure-PyTorch scan
   and conv on the same GPU, with and without carried states, outputs, final states and
   gradients (skipped, with the reason, where a package is not installed);
2. the CUDA tests of the suite (`pytest -m cuda`);
3. training under AMP (float16 autocast, gradient scaler) through the Trainer on the synthetic
   videos: the tiny Mask2Former, MPVSS started from it, TV3S; loss at the start and the end;
4. VideoPredictor in float16 against float32 with those weights on a validation video: share
   of pixels whose labels agree (target: at least 99.5%);
5. speed at 480x853, random weights: per-frame Mask2Former R50 against MPVSS R50 at K = 5 (the
   MPVSS paper measures 1.75x on a V100) and TV3S MiT-B1 streamed one frame at a time.

With --kernels DIR (a folder that `tools/build_kernels.py prepare` compiled ahead on a CPU
machine for this machine's Python, torch and GPU), `build_kernels.py finish DIR` first compiles
the two bindings and links them with the prepared objects (seconds), and the kernels it places
are the ones checked and used: then a kernel that is not importable fails its check instead of
being skipped, and two more checks run:

6. TV3S streamed with the kernels against without them (the tiny model trained in 3, on a
   validation video): largest relative difference of the logits and the share of equal labels;
7. frames/s at 480x853 (random weights, float32) of TV3S MiT-B1 streamed with the kernels and
   without them, beside the per-frame SegFormer-B1 (the same encoder and fusion, no temporal head).

Without CUDA it says so and runs the CPU parts only: the pure-PyTorch scan and conv against
their reference loops, and the training of the three models in float32 on the CPU (one step
each by default); with --kernels the manifest is still read (a missing or unreadable one stops
the run at once) and the kernel checks are reported as skipped. The exit status is 0 when every
check that ran passed.

    python tools/gpu_check.py [--report output/gpu_report.json] [--steps N] [--kernels DIR]
"""
import argparse
import contextlib
import functools
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET

import vss  # noqa: F401  (first: its warnings filter quiets fvcore's torch.jit deprecation)

import cv2
import numpy as np
import torch
from detectron2.data import MetadataCatalog

from vss.benchmark import REPO
from vss.benchmark.speed import benchmark, build
from vss.data.synthetic import generate
from vss.engine import Trainer, VideoPredictor, setup_cfg
from vss.modeling.tv3s import scan
from vss.utils.flops import video_frames
TINY = {
    "mask2former": "configs/synthetic/mask2former_tiny.yaml",
    "mpvss": "configs/synthetic/mpvss_query_flow.yaml",
    "tv3s": "configs/synthetic/tv3s_tiny.yaml",
}
AGREEMENT_TARGET = 0.995
KERNEL_RTOL = 1e-3  # float32 kernels against float32 PyTorch: summation order differs
# TV3S streamed with the kernels against without (float32, the differences carried frame to frame)
STREAM_RTOL = 1e-3
STREAM_AGREEMENT = 0.999


class Skip(Exception):
    """A check that cannot run here; its message says why."""


def wanted(report, name):
    # the prepared kernels are finished whatever --only names: the checks it names may use them
    return name == "kernels_finish" or not report["only"] or name.startswith(tuple(report["only"]))


def save(report, path):
    """Write the report as it stands: a run cut short still leaves every finished check."""
    statuses = [c["status"] for c in report["checks"].values()]
    report["summary"] = {s: statuses.count(s) for s in ("passed", "failed", "skipped")}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(report, f, indent=2, default=str)
    os.replace(path + ".tmp", path)


def run_check(report, name, fn, *args):
    """Run one check, record its result (with timing, or the error) under report["checks"][name]
    and save the report. Checks not named by --only are not run and not recorded (returns None).
    """
    if not wanted(report, name):
        return None
    print(f"[gpu_check] {name} ...", flush=True)
    start = time.perf_counter()
    try:
        result = fn(*args)
        status = "passed" if result.pop("ok", True) else "failed"
    except Skip as e:
        result, status = {"reason": str(e)}, "skipped"
    except Exception as e:  # a broken check must not stop the others
        result, status = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}, "failed"
    result = {"status": status, "seconds": round(time.perf_counter() - start, 2), **result}
    report["checks"][name] = result
    save(report, report["path"])
    print(f"[gpu_check] {name}: {status} ({result['seconds']} s)"
          + (f": {result.get('reason') or result.get('error')}" if status != "passed" else ""), flush=True)
    return result


def environment():
    cuda = torch.cuda.is_available()
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": cuda,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
    }
    if cuda:
        env["device"] = torch.cuda.get_device_name(0)
        env["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    for module in ("detectron2", "mamba_ssm", "causal_conv1d"):
        try:
            env[module] = getattr(__import__(module), "__version__", "installed")
        except ImportError as e:
            env[module] = f"not importable ({e})"
    return env


# ---- 1. scan and conv: fast path against the reference -------------------------------------------

def _scan_inputs(device, with_state, seed=0):
    g = torch.Generator().manual_seed(seed)
    batch, d_inner, d_state, length = 2, 64, 16, 200
    t = {
        "u": torch.randn(batch, d_inner, length, generator=g),
        "delta": torch.randn(batch, d_inner, length, generator=g) * 0.5,
        "A": -torch.rand(d_inner, d_state, generator=g) * 2 - 0.1,
        "B": torch.randn(batch, d_state, length, generator=g),
        "C": torch.randn(batch, d_state, length, generator=g),
        "D": torch.randn(d_inner, generator=g),
        "z": torch.randn(batch, d_inner, length, generator=g),
        "delta_bias": torch.randn(d_inner, generator=g) * 0.1,
    }
    if with_state:
        t["initial_state"] = torch.randn(batch, d_inner, d_state, generator=g)
    return {k: v.to(device).requires_grad_() for k, v in t.items()}


def _outputs(fn, inputs):
    """Output, final state and input gradients of `fn(**inputs)`, which returns (y, final state)."""
    y, final = fn(**inputs)
    # Gradients through y only: the CUDA kernel does not back-propagate through the final state.
    (y * torch.linspace(-1, 1, y.shape[-1], device=y.device)).sum().backward()
    grads = {k: v.grad.detach().clone() for k, v in inputs.items()}
    return {"y": y.detach(), "final_state": final.detach(), **{f"grad_{k}": g for k, g in grads.items()}}


def _rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()


def compare_paths(fast, reference, make_inputs, device, rtol):
    """Relative errors of `fast` against `reference` on the same inputs, with and without carried state."""
    result, ok = {}, True
    for with_state in (False, True):
        fast_out = _outputs(fast, make_inputs(device, with_state))
        ref_out = _outputs(reference, make_inputs(device, with_state))
        errors = {k: _rel_err(fast_out[k], ref_out[k]) for k in ref_out}
        result["with_state" if with_state else "zero_state"] = errors
        ok = ok and max(errors.values()) <= rtol
    return {"ok": ok, "rtol": rtol, **result}


def _conv_inputs(device, with_state, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = {"x": torch.randn(2, 64, 50, generator=g), "weight": torch.randn(64, 4, generator=g),
         "bias": torch.randn(64, generator=g)}
    if with_state:
        t["initial_state"] = torch.randn(2, 64, 3, generator=g)
    return {k: v.to(device).requires_grad_() for k, v in t.items()}


def _conv_torch(**kw):
    # the pure-PyTorch conv: the same call on CPU, where no kernel is ever used
    device = kw["x"].device
    out, final = _conv_fast(**{k: v.cpu() for k, v in kw.items()})
    return out.to(device), final.to(device)


_conv_fast = functools.partial(scan.causal_conv1d, return_final_state=True, activation="silu")
_SCAN_OPTIONS = {"delta_softplus": True, "return_final_state": True}
_scan_fast = functools.partial(scan.selective_scan, **_SCAN_OPTIONS)
_scan_torch = functools.partial(scan.selective_scan_torch, **_SCAN_OPTIONS)
_scan_ref = functools.partial(scan.selective_scan_ref, **_SCAN_OPTIONS)


def _kernel_missing(module, required):
    """A kernel that is not importable: skipped, or failed when --kernels placed it."""
    try:
        __import__(module)
        error = "imports, but vss's kernel lookup found nothing usable"
    except Exception as e:  # ImportError, or an undefined symbol in the linked module
        error = f"{type(e).__name__}: {e}"
    if required:
        return {"ok": False, "error": f"{module} was placed by --kernels but is not usable: {error}"}
    raise Skip(f"{module} is not importable (prepare and finish it: tools/build_kernels.py, "
               f"or build it here: VSS_EXTRAS=mamba bash tools/install.sh)")


def check_scan_kernel(required=False):
    if scan._mamba_selective_scan() is None:
        return _kernel_missing("mamba_ssm.ops.selective_scan_interface", required)
    return compare_paths(_scan_fast, _scan_torch, _scan_inputs, "cuda", KERNEL_RTOL)


def check_conv_kernel(required=False):
    if scan._causal_conv1d_kernel() is None:
        return _kernel_missing("causal_conv1d", required)
    return compare_paths(_conv_fast, _conv_torch, _conv_inputs, "cuda", KERNEL_RTOL)


@contextlib.contextmanager
def kernels_disabled():
    """The pure-PyTorch scan and conv everywhere inside, even where the kernels are installed."""
    saved = scan._mamba_selective_scan, scan._causal_conv1d_kernel
    scan._mamba_selective_scan = scan._causal_conv1d_kernel = lambda: None
    try:
        yield
    finally:
        scan._mamba_selective_scan, scan._causal_conv1d_kernel = saved


class WithoutKernels(torch.nn.Module):
    """`model` run with kernels_disabled (the same weights and state)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, *args, **kwargs):
        with kernels_disabled():
            return self.model(*args, **kwargs)


def kernels_usable():
    return scan._mamba_selective_scan() is not None and scan._causal_conv1d_kernel() is not None


# ---- 0. the prepared kernels: finish the build here ---------------------------------------------

def _build_kernels_module():
    spec = importlib.util.spec_from_file_location("vss_build_kernels", os.path.join(REPO, "tools", "build_kernels.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_kernels_manifest(folder):
    """The manifest of a prepared folder (exits with build_kernels' message when there is none)."""
    return _build_kernels_module().load_manifest(os.path.abspath(folder))


def use_site(site):
    """Put a finished kernels folder first on sys.path and PYTHONPATH (for the pytest subprocess)."""
    sys.path.insert(0, site)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [site, os.environ.get("PYTHONPATH")]))
    scan._mamba_selective_scan.cache_clear()
    scan._causal_conv1d_kernel.cache_clear()


def finish_kernels(folder):
    """`build_kernels.py finish DIR`: the bindings compiled and linked here; their folder used."""
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "build_kernels.py"), "finish", folder],
                          capture_output=True, text=True)
    output = proc.stdout[-4000:] + proc.stderr[-4000:]
    if proc.returncode != 0:
        return {"ok": False, "error": f"build_kernels.py finish exited {proc.returncode}", "output": output}
    site = proc.stdout.strip().splitlines()[-1]
    use_site(site)
    with open(os.path.join(site, "vss_finish.json")) as f:
        finished = json.load(f)
    return {"ok": kernels_usable(), "site": site, "finish_seconds": finished["seconds"],
            "modules": finished["modules"], "output": output}


def check_tv3s_streaming_kernels(weights, frames):
    """The tiny TV3S streamed over `frames` with the kernels and without: logits and labels."""
    if not kernels_usable():
        raise Skip("the kernels are not usable here (see mamba_selective_scan_vs_torch, causal_conv1d_vs_torch)")
    cfg = setup_cfg(os.path.join(REPO, TINY["tv3s"]), ["MODEL.DEVICE", "cuda", "MODEL.WEIGHTS", weights or ""])
    outputs = {}
    for use_kernels in (True, False):
        predictor = VideoPredictor(cfg)
        with contextlib.nullcontext() if use_kernels else kernels_disabled():
            outputs[use_kernels] = [out["sem_seg"].float().cpu() for out in predictor.run(frames)]
    errors = [_rel_err(a, b) for a, b in zip(outputs[True], outputs[False])]
    agree = [(a.argmax(0) == b.argmax(0)).float().mean().item() for a, b in zip(outputs[True], outputs[False])]
    return {"ok": max(errors) <= STREAM_RTOL and min(agree) >= STREAM_AGREEMENT,
            "weights": weights or "random", "frames": len(frames), "max_rel_err": max(errors),
            "rel_err_per_frame": errors, "label_agreement_min": min(agree), "label_agreement_mean": float(np.mean(agree)),
            "rtol": STREAM_RTOL, "agreement_target": STREAM_AGREEMENT}


def check_scan_cpu():
    return compare_paths(_scan_torch, _scan_ref, _scan_inputs, "cpu", 1e-5)


def check_scan_torch_cuda():
    """The pure-PyTorch scan on the GPU against the reference loop on the GPU."""
    return compare_paths(_scan_torch, _scan_ref, _scan_inputs, "cuda", 1e-4)


# ---- 2. CUDA tests -------------------------------------------------------------------------------

def check_cuda_tests():
    with tempfile.TemporaryDirectory() as tmp:
        xml = os.path.join(tmp, "junit.xml")
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "tests", f"--junitxml={xml}"],
                              cwd=REPO, capture_output=True, text=True)
        if not os.path.isfile(xml):
            return {"ok": False, "error": "pytest wrote no report", "output": proc.stdout[-4000:] + proc.stderr[-4000:]}
        cases = {}
        for case in ET.parse(xml).iter("testcase"):
            outcome = "passed"
            for child in case:
                if child.tag in ("failure", "error"):
                    outcome = "failed"
                elif child.tag == "skipped":
                    outcome = f"skipped: {child.get('message', '')}"
            cases[f"{case.get('classname')}::{case.get('name')}"] = outcome
    failed = [k for k, v in cases.items() if v == "failed"]
    passed = sum(v == "passed" for v in cases.values())
    return {
        "ok": proc.returncode == 0 and not failed and passed > 0,
        "passed": passed,
        "failed": failed,
        "skipped": {k: v for k, v in cases.items() if v.startswith("skipped")},
        "output_tail": proc.stdout[-3000:],
    }


# ---- 3. training, 4. predictor in float16 ------------------------------------------------------

def train(name, steps, device, amp, out_dir, weights=""):
    """Train the tiny `name` model for `steps` iterations; returns the result and the final checkpoint."""
    cfg = setup_cfg(os.path.join(REPO, TINY[name]), [
        "MODEL.DEVICE", device, "MODEL.WEIGHTS", weights, "SOLVER.AMP.ENABLED", str(amp),
        "SOLVER.MAX_ITER", str(steps), "SOLVER.WARMUP_ITERS", str(min(10, steps)),
        "OUTPUT_DIR", os.path.join(out_dir, name), "DATASETS.TEST", "()",
        "DATALOADER.NUM_WORKERS", "2" if device == "cuda" else "0",
    ])
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    losses = [v for v, _ in trainer.storage.history("total_loss").values()]
    final = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    finite = bool(np.all(np.isfinite(losses)))
    return {
        # a loss that falls is asked of runs long enough to show it
        "ok": finite and len(losses) == steps and (steps < 50 or last < first),
        "amp": amp, "steps": steps, "loss_first10": float(first), "loss_last10": float(last),
        "seconds_per_step": seconds / steps, "checkpoint": final,
    }


def check_half_predictor(name, weights, frames):
    if weights is None:
        raise Skip(f"no trained {name} weights (its training check failed)")
    cfg = setup_cfg(os.path.join(REPO, TINY[name]), ["MODEL.DEVICE", "cuda", "MODEL.WEIGHTS", weights])
    labels = {}
    for half in (False, True):
        predictor = VideoPredictor(cfg, half=half)
        labels[half] = [out["sem_seg"].argmax(0).cpu() for out in predictor.run(frames)]
    agree = np.mean([(a == b).float().mean().item() for a, b in zip(labels[False], labels[True])])
    worst = min((a == b).float().mean().item() for a, b in zip(labels[False], labels[True]))
    return {"ok": agree >= AGREEMENT_TARGET, "agreement": agree, "worst_frame_agreement": worst,
            "target": AGREEMENT_TARGET, "frames": len(frames)}


def val_frames(summary, count):
    """The first `count` frames (BGR) of the first validation video of the synthetic set."""
    folder = os.path.join(summary["root"], "data", summary["videos"]["val"][0], "origin")
    names = sorted(os.listdir(folder))[:count]
    return [cv2.imread(os.path.join(folder, n)) for n in names]


# ---- 5. speed ----------------------------------------------------------------------------------

def check_speed(configs, frames, repeats, height=480, width=853, device="cuda", without_kernels=()):
    """frames/s of each config (name -> path, or (path, overrides)) taking turns on the same
    random video, float32. without_kernels: (name, of) pairs that add the model `of` run with the
    pure-PyTorch scan and conv as `name`."""
    models = {}
    for name, path in configs.items():
        path, opts = (path, []) if isinstance(path, str) else path
        models[name] = build(os.path.join(REPO, path), ["MODEL.WEIGHTS", "", *opts], device)
    for name, of in without_kernels:
        models[name] = WithoutKernels(models[of])
    video = video_frames(height, width, frames, fill=None, seed=0)
    for f in video:
        f["image"] = f["image"].to(device)
    results = benchmark(models, video, warmup=5, repeats=repeats)
    out = {name: {"fps_mean": float(np.mean(r["fps"])), "fps_runs": r["fps"],
                  "peak_allocated_mib": r["peak_bytes"] / 2**20} for name, r in results.items()}
    out["kernels_usable"] = kernels_usable()
    out["size"] = f"{height}x{width}"
    out["frames_per_run"] = frames
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", default=os.path.join(REPO, "output", "gpu_report.json"))
    parser.add_argument("--steps", type=int, default=None,
                        help="training iterations per model (default: 300 on CUDA, 1 on the CPU)")
    parser.add_argument("--frames", type=int, default=50, help="frames per timed run of the speed checks")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per model in the speed checks")
    parser.add_argument("--kernels", metavar="DIR",
                        help="a folder from `tools/build_kernels.py prepare`: finish it here and check those kernels")
    parser.add_argument("--only", default="", metavar="NAMES",
                        help="comma-separated check names or name prefixes to run (default: all), e.g. "
                             "train_tv3s,half_predictor_tv3s,speed")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    steps = args.steps or (300 if cuda else 1)
    manifest = read_kernels_manifest(args.kernels) if args.kernels else None

    report = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "environment": environment(),
              "only": [n for n in args.only.split(",") if n],
              "path": args.report, "checks": {}}
    if manifest is not None:
        report["kernels"] = {"folder": os.path.abspath(args.kernels), "target": manifest["target"],
                             "packages": {k: v["version"] for k, v in manifest["packages"].items()},
                             "prepare_seconds": manifest.get("total_seconds"), "sizes": manifest.get("sizes")}
    print(f"[gpu_check] environment: {json.dumps(report['environment'])}", flush=True)
    if not cuda:
        print("[gpu_check] CUDA is not available on this machine: running the CPU parts only; "
              "the CUDA checks are reported as skipped", flush=True)
    elif manifest is not None:
        # first: the training and predictor checks then run with the kernels as a user would
        run_check(report, "kernels_finish", finish_kernels, args.kernels)
        report["environment"] = environment()
    root = MetadataCatalog.get("synthetic_vss_train").dataset_root
    summary = generate(root)
    print(f"[gpu_check] synthetic data: {summary['root']}", flush=True)

    run_check(report, "scan_torch_vs_reference_cpu", check_scan_cpu)
    trained = {}
    device = "cuda" if cuda else "cpu"
    with tempfile.TemporaryDirectory(prefix="vss-gpu-check-") as out_dir:
        # MPVSS starts from the per-frame model, as in the paper
        for name, weights in [("mask2former", ""), ("mpvss", None), ("tv3s", "")]:
            weights = trained.get("mask2former", "") if weights is None else weights
            result = run_check(report, f"train_{name}_{'amp' if cuda else 'cpu'}", train,
                               name, steps, device, cuda, out_dir, weights)
            if result is not None and result["status"] == "passed":
                trained[name] = result["checkpoint"]
        if cuda:
            run_check(report, "scan_torch_vs_reference_cuda", check_scan_torch_cuda)
            run_check(report, "mamba_selective_scan_vs_torch", check_scan_kernel, manifest is not None)
            run_check(report, "causal_conv1d_vs_torch", check_conv_kernel, manifest is not None)
            run_check(report, "pytest_cuda", check_cuda_tests)
            frames = val_frames(summary, 20)
            for name in TINY:
                run_check(report, f"half_predictor_{name}", check_half_predictor, name, trained.get(name), frames)
            run_check(report, "speed_mask2former_r50_vs_mpvss_r50_k5", check_speed,
                      {"mask2former_r50": "configs/vspw/mask2former/R50.yaml", "mpvss_r50_k5": "configs/vspw/mpvss/R50.yaml"},
                      args.frames, args.repeats)
            speed = report["checks"].get("speed_mask2former_r50_vs_mpvss_r50_k5", {})
            if speed.get("status") == "passed":
                speed["speedup"] = speed["mpvss_r50_k5"]["fps_mean"] / speed["mask2former_r50"]["fps_mean"]
            if manifest is None and not kernels_usable():
                run_check(report, "speed_tv3s_mitb1_streaming", check_speed,
                          {"tv3s_mitb1": "configs/vspw/tv3s/MiT-B1.yaml"}, args.frames, args.repeats)
            else:
                run_check(report, "tv3s_streaming_kernels_vs_torch", check_tv3s_streaming_kernels,
                          trained.get("tv3s"), frames)
                # kernels and pure PyTorch on the same model in turns, beside SegFormer-B1 per frame
                run_check(report, "speed_tv3s_mitb1_streaming", check_speed,
                          {"tv3s_mitb1_kernels": "configs/vspw/tv3s/MiT-B1.yaml",
                           "segformer_b1_per_frame": ("configs/vspw/tv3s/MiT-B1.yaml",
                                                      ["MODEL.META_ARCHITECTURE", "SemanticSegmentor"])},
                          args.frames, args.repeats, without_kernels=[("tv3s_mitb1_torch_scan", "tv3s_mitb1_kernels")])
                speed = report["checks"].get("speed_tv3s_mitb1_streaming", {})
                if speed.get("status") == "passed":
                    speed["kernel_speedup"] = (speed["tv3s_mitb1_kernels"]["fps_mean"]
                                               / speed["tv3s_mitb1_torch_scan"]["fps_mean"])
                    save(report, args.report)
        else:
            skipped = ["scan_torch_vs_reference_cuda", "mamba_selective_scan_vs_torch", "causal_conv1d_vs_torch",
                       "pytest_cuda", *(f"half_predictor_{n}" for n in TINY),
                       "speed_mask2former_r50_vs_mpvss_r50_k5", "speed_tv3s_mitb1_streaming"]
            if manifest is not None:
                skipped[:0] = ["kernels_finish"]
                skipped.insert(skipped.index("speed_tv3s_mitb1_streaming"), "tv3s_streaming_kernels_vs_torch")
            for name in skipped:
                if wanted(report, name):
                    report["checks"][name] = {"status": "skipped", "reason": "no CUDA device"}

    save(report, args.report)
    print(f"[gpu_check] {report['summary']['passed']} passed, {report['summary']['failed']} failed, "
          f"{report['summary']['skipped']} skipped; report: {args.report}", flush=True)
    return 1 if report["summary"]["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())

"""`make test-gpu` (tools/gpu_check.py) on a machine without CUDA, and the kernel build's flags."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO

sys.path.insert(0, str(REPO / "tools"))
from build_kernels import nvcc_flags  # noqa: E402

CUDA_CHECKS = {
    "scan_torch_vs_reference_cuda", "mamba_selective_scan_vs_torch", "causal_conv1d_vs_torch", "pytest_cuda",
    "half_predictor_mask2former", "half_predictor_mpvss", "half_predictor_tv3s",
    "speed_mask2former_r50_vs_mpvss_r50_k5", "speed_tv3s_mitb1_streaming",
}
CPU_CHECKS = {"scan_torch_vs_reference_cpu", "train_mask2former_cpu", "train_mpvss_cpu", "train_tv3s_cpu"}


@pytest.mark.slow
def test_gpu_check_without_cuda_runs_cpu_parts_and_exits_0(tmp_path):
    report = tmp_path / "report.json"
    # No GPU visible, whatever the machine has: this is the no-CUDA behaviour.
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", DETECTRON2_DATASETS=str(tmp_path / "datasets"))
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "gpu_check.py"), "--report", str(report)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "CUDA is not available on this machine" in proc.stdout
    result = json.loads(report.read_text())
    assert result["environment"]["cuda_available"] is False
    checks = result["checks"]
    assert set(checks) == CPU_CHECKS | CUDA_CHECKS
    for name in CPU_CHECKS:
        assert checks[name]["status"] == "passed", (name, checks[name])
    for name in CUDA_CHECKS:
        assert checks[name] == {"status": "skipped", "reason": "no CUDA device"}
    scan = checks["scan_torch_vs_reference_cpu"]
    assert set(scan["with_state"]) == {"y", "final_state", "grad_initial_state", "grad_u", "grad_delta", "grad_A",
                                       "grad_B", "grad_C", "grad_D", "grad_z", "grad_delta_bias"}
    assert max(scan["with_state"].values()) <= 1e-5
    assert checks["train_mask2former_cpu"]["steps"] == 1 and not checks["train_tv3s_cpu"]["amp"]
    assert result["summary"] == {"passed": 4, "failed": 0, "skipped": 9}


def test_kernel_build_flags_name_only_the_wanted_architectures():
    flags = ["-O3", "-gencode", "arch=compute_75,code=sm_75", "--use_fast_math",
             "-gencode", "arch=compute_90,code=sm_90", "-gencode=arch=compute_80,code=sm_80", "-lineinfo"]
    assert nvcc_flags(flags, ["90"]) == ["-O3", "--use_fast_math", "-lineinfo",
                                         "-gencode", "arch=compute_90,code=sm_90"]
    assert nvcc_flags(["-O3"], ["80", "89"]) == ["-O3", "-gencode", "arch=compute_80,code=sm_80",
                                                 "-gencode", "arch=compute_89,code=sm_89"]


def test_conv_comparison_runs_with_and_without_state():
    # the plumbing of the causal-conv1d check, on the CPU (the kernel side needs CUDA)
    import gpu_check

    result = gpu_check.compare_paths(gpu_check._conv_fast, gpu_check._conv_torch, gpu_check._conv_inputs, "cpu", 1e-6)
    assert result["ok"]
    assert set(result["with_state"]) == {"y", "final_state", "grad_x", "grad_weight", "grad_bias", "grad_initial_state"}
    assert set(result["zero_state"]) == {"y", "final_state", "grad_x", "grad_weight", "grad_bias"}


def _fake_prepared(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps({
        "format": 1, "target": {"archs": ["80", "90"], "torch": "2.11.0+cu130", "torch_cuda": "13.0", "python": "3.12"},
        "packages": {"mamba-ssm": {"version": "2.3.2.post1", "extensions": []}}, "total_seconds": 1.0, "sizes": {}}))
    return folder


def test_gpu_check_refuses_a_kernels_folder_without_manifest(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", DETECTRON2_DATASETS=str(tmp_path / "datasets"))
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "gpu_check.py"), "--kernels", str(tmp_path / "none"),
                           "--report", str(tmp_path / "report.json")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode != 0
    assert f"{tmp_path / 'none'} has no manifest.json" in proc.stderr
    assert not (tmp_path / "report.json").exists()


def test_gpu_check_with_kernels_and_no_cuda_reports_the_kernel_checks_skipped(tmp_path):
    folder = _fake_prepared(tmp_path / "kernels")
    report = tmp_path / "report.json"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", DETECTRON2_DATASETS=str(tmp_path / "datasets"))
    only = "kernels_finish,mamba,causal,tv3s_streaming,speed_tv3s"
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "gpu_check.py"), "--kernels", str(folder),
                           "--only", only, "--report", str(report)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(report.read_text())
    assert result["kernels"]["folder"] == str(folder)
    assert result["kernels"]["target"]["archs"] == ["80", "90"]
    assert result["kernels"]["packages"] == {"mamba-ssm": "2.3.2.post1"}
    assert set(result["checks"]) == {"kernels_finish", "mamba_selective_scan_vs_torch", "causal_conv1d_vs_torch",
                                     "tv3s_streaming_kernels_vs_torch", "speed_tv3s_mitb1_streaming"}
    assert all(c == {"status": "skipped", "reason": "no CUDA device"} for c in result["checks"].values())


def test_kernels_can_be_switched_off_around_a_model():
    import gpu_check
    from vss.modeling.tv3s import scan

    sentinel = object()
    saved = scan._mamba_selective_scan, scan._causal_conv1d_kernel
    scan._mamba_selective_scan = scan._causal_conv1d_kernel = lambda: sentinel
    try:
        assert gpu_check.kernels_usable()
        seen = []
        model = gpu_check.WithoutKernels(torch.nn.Module())
        model.model.forward = lambda x: seen.append((scan._mamba_selective_scan(), scan._causal_conv1d_kernel())) or x
        assert model(3) == 3 and seen == [(None, None)]
        assert scan._mamba_selective_scan() is sentinel  # back after the call
    finally:
        scan._mamba_selective_scan, scan._causal_conv1d_kernel = saved


def test_a_missing_kernel_is_skipped_unless_the_kernels_were_placed():
    import gpu_check

    with pytest.raises(gpu_check.Skip, match="not importable"):
        gpu_check._kernel_missing("vss_no_such_kernel_module", required=False)
    result = gpu_check._kernel_missing("vss_no_such_kernel_module", required=True)
    assert result["ok"] is False and "placed by --kernels but is not usable" in result["error"]


@pytest.mark.slow
def test_speed_check_times_the_model_with_and_without_kernels_beside_a_per_frame_model():
    # the plumbing of the TV3S MiT-B1 speed check, on small frames on the CPU with the tiny configs
    import gpu_check

    tiny = gpu_check.TINY["tv3s"]
    result = gpu_check.check_speed({"tv3s": tiny, "per_frame": (tiny, ["MODEL.META_ARCHITECTURE", "SemanticSegmentor"])},
                                   frames=2, repeats=1, height=64, width=96, device="cpu",
                                   without_kernels=[("tv3s_torch_scan", "tv3s")])
    assert {"tv3s", "per_frame", "tv3s_torch_scan"} <= set(result)
    assert all(result[name]["fps_mean"] > 0 for name in ("tv3s", "per_frame", "tv3s_torch_scan"))
    assert result["kernels_usable"] is False and result["size"] == "64x96"

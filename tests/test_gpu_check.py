"""`make test-gpu` (tools/gpu_check.py) on a machine without CUDA, and the kernel build's flags."""
import json
import os
import subprocess
import sys

import pytest

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

"""The commands a user types: make targets and the scripts' start-up output."""
import ast
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO

ENTRY_POINTS = ["train_net.py", "demo/demo.py", "tools/quickstart.py", "tools/convert_tv3s.py",
                "tools/convert_flownets.py", "tools/benchmark_scan.py", "tools/benchmark.py",
                "tools/benchmark_streaming.py", "tools/analyze_model.py", "tools/synthetic_benchmark.py",
                "tools/gpu_check.py", "tools/plot_keyframe_tradeoff.py", "tools/recipe_ablation.py",
                "tools/calibrate_synthetic.py", "tools/tv3s_state_carry.py", "datasets/prepare_synthetic.py"]
JIT_WARNING = "`torch.jit.script` is deprecated"


def _python(args, cwd=REPO):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_demo_passes_out_to_the_quickstart(tmp_path):
    def quickstart_line(*variables):
        # -n prints the commands without running them (the installer's too, when .venv is missing)
        run = subprocess.run(["make", "-n", "demo", *variables], cwd=REPO, capture_output=True, text=True, check=True)
        return [line for line in run.stdout.splitlines() if "tools/quickstart.py" in line]

    assert quickstart_line(f"OUT={tmp_path}/my run") == [f'.venv/bin/python tools/quickstart.py --output "{tmp_path}/my run"']
    assert [line.strip() for line in quickstart_line()] == [".venv/bin/python tools/quickstart.py"]


def _imports_vss_first(path):
    """Whether the script imports vss (whose __init__ filters the jit warning) before anything else
    that is not in the standard library."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            roots = {name.split(".")[0] for name in names}
            if roots - set(sys.stdlib_module_names):
                return roots == {"vss"}
    return False


def test_entry_points_import_vss_first():
    assert [p for p in ENTRY_POINTS if not _imports_vss_first(REPO / p)] == []


@pytest.mark.slow
def test_help_prints_no_jit_warning():
    # The warning is real in this environment (else there is nothing to filter and no test).
    if JIT_WARNING not in _python(["-c", "import detectron2.modeling"]).stderr:
        pytest.skip("this torch does not deprecate torch.jit.script")
    run = _python(["demo/demo.py", "--help"])
    assert run.returncode == 0 and "usage:" in run.stdout, run.stderr[-2000:]
    assert JIT_WARNING not in run.stderr
    assert JIT_WARNING not in _python(["-c", "import vss.engine"]).stderr

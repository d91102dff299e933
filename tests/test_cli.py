"""User errors end every entry point with one line and exit status 2; --debug shows the traceback."""
import os
import runpy
import subprocess
import sys

import pytest

from vss.engine.cli import run_main

from conftest import REPO

CONFIG = "configs/synthetic/mask2former_tiny.yaml"


def _fail(message):
    def main():
        raise ValueError(message)
    return main


def test_run_main(capsys, monkeypatch):
    monkeypatch.delenv("VSS_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_:
        run_main(_fail("config file x.yaml does not exist"), "prog")
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "prog: error: config file x.yaml does not exist\n"
    assert run_main(lambda: 7, "prog") == 7
    with pytest.raises(ValueError, match="bad"):  # --debug
        run_main(_fail("bad"), "prog", debug=True)
    monkeypatch.setenv("VSS_DEBUG", "1")
    with pytest.raises(ValueError, match="bad"):
        run_main(_fail("bad"), "prog")
    with pytest.raises(KeyError):  # not a user error: the traceback as ever
        run_main(lambda: {}["x"], "prog")


def _exit(status):
    def main():
        sys.exit(status)
    return main


def test_run_main_sys_exit(capsys):
    with pytest.raises(SystemExit) as exit_:  # a tool's sys.exit(message): status 2, the message as is
        run_main(_exit("error: cannot write out.png"), "prog")
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "error: cannot write out.png\n"
    for status in (0, 1, None):  # numeric exits (argparse's own among them) keep their status
        with pytest.raises(SystemExit) as exit_:
            run_main(_exit(status), "prog")
        assert exit_.value.code == status
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("script, args, last_line", [
    ("tools/plot_keyframe_tradeoff.py", ["--runs", "a=/nonexistent/log.txt", "--output", "p.png"],
     "error: /nonexistent/log.txt: no such file"),
    ("tools/analyze_model.py", ["--config-file", "missing.yaml"], None),
])
def test_tools_exit_2(capsys, monkeypatch, script, args, last_line):
    monkeypatch.delenv("VSS_DEBUG", raising=False)
    assert _run(script, *args) == 2
    line = capsys.readouterr().err.splitlines()[-1]
    assert line == last_line if last_line else ": error: " in line and "missing.yaml" in line


def _run(script, *args):
    """The exit status of `script` run as a command in this process (its stderr stays in capsys)."""
    sys_argv = sys.argv
    sys.argv = [script, *args]
    try:
        runpy.run_path(str(REPO / script), run_name="__main__")
        code = 0
    except SystemExit as e:
        code = e.code
    finally:
        sys.argv = sys_argv
    return code


def test_train_net_errors(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("VSS_DEBUG", raising=False)
    assert _run("train_net.py") == 2
    assert capsys.readouterr().err.splitlines()[-1] == ("train_net.py: error: --config-file is required: the config "
                                                        "of the model to train or evaluate (see --help)")
    assert _run("train_net.py", "--config-file", "missing.yaml") == 2
    assert capsys.readouterr().err.splitlines()[-1] == "train_net.py: error: config file missing.yaml does not exist"
    # an evaluation without weights: the hint on one line
    user_error = ["--config-file", str(REPO / CONFIG), "--eval-only", "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path)]
    assert _run("train_net.py", *user_error) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith(
        "train_net.py: error: MODEL.WEIGHTS is empty, so the model would have random weights: train it first with")
    with pytest.raises(ValueError, match="MODEL.WEIGHTS is empty"):
        _run("train_net.py", "--debug", *user_error)


@pytest.mark.parametrize("tool", ["tools/convert_flownets.py", "tools/convert_tv3s.py"])
def test_converters_report_a_missing_input_in_one_line(tool, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("VSS_DEBUG", raising=False)
    args = [str(tmp_path / "missing.pth"), str(tmp_path / "out.pth")]
    if tool.endswith("tv3s.py"):
        args += ["--config-file", str(REPO / "configs/synthetic/tv3s_tiny.yaml")]
    assert _run(tool, *args) == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith(f"{os.path.basename(tool)}: error: ") and "missing.pth" in last
    with pytest.raises(FileNotFoundError):
        _run(tool, *args, "--debug")


def test_demo_errors(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("VSS_DEBUG", raising=False)
    args = ["--config-file", str(REPO / CONFIG), "--input", str(tmp_path / "none.mp4"), "--output-dir", str(tmp_path)]
    assert _run("demo/demo.py", *args) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (f"demo.py: error: input {tmp_path / 'none.mp4'} does not "
                                                        "exist (expected a video file, a folder of frames or a glob "
                                                        "pattern)")
    with pytest.raises(ValueError, match="does not exist"):
        _run("demo/demo.py", *args, "--debug")


@pytest.mark.slow
def test_train_net_as_a_process():
    env = {k: v for k, v in os.environ.items() if k != "VSS_DEBUG"}

    def python(*args):
        return subprocess.run([sys.executable, "train_net.py", *args], cwd=REPO, capture_output=True, text=True,
                              timeout=300, env={**env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})

    run = python("--help")
    assert run.returncode == 0
    assert "Train a vss model" in run.stdout and "--debug" in run.stdout
    assert "train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS path/to/model.pth" in run.stdout
    run = python("--config-file", CONFIG, "--eval-only", "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "missing.pth")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.splitlines()[-1].startswith("train_net.py: error: MODEL.WEIGHTS missing.pth does not exist")

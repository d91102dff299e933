"""train_net.py end to end: a folder dataset named on the command line, evaluated, logged."""
import os
import re
import subprocess
import sys

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer

from vss.data.synthetic import generate
from vss.engine import Trainer, setup_cfg

from conftest import REPO

CONFIG = str(REPO / "configs" / "synthetic" / "mask2former_tiny.yaml")


@pytest.mark.slow
def test_eval_only_on_a_folder_logs_everything(tmp_path):
    root = tmp_path / "my_videos"
    # VSPW layout + classes.json; 10 frames: two mVC8 windows
    generate(root, train_videos=1, val_videos=1, frames=10, height=32, width=48)
    opts = ["DATASETS.FOLDERS", str([["my_videos_val", str(root), "val"]]), "DATASETS.TEST", "('my_videos_val',)",
            "INPUT.MIN_SIZE_TEST", "32", "DATALOADER.NUM_WORKERS", "0"]
    torch.manual_seed(0)
    cfg = setup_cfg(CONFIG, opts + ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""])
    model = Trainer.build_model(cfg)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("random")
    weights, out = str(tmp_path / "random.pth"), tmp_path / "eval"

    # a config asking for CUDA where there is none: the fallback warning must reach the log
    device = "cpu" if torch.cuda.is_available() else "cuda"
    run = subprocess.run([sys.executable, str(REPO / "train_net.py"), "--config-file", CONFIG, "--eval-only",
                          "MODEL.WEIGHTS", weights, "OUTPUT_DIR", str(out), "MODEL.DEVICE", device, *opts],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert "torch.jit.script" not in run.stderr  # the fvcore FutureWarning is filtered

    log = (out / "log.txt").read_text()
    assert f"vss.data.datasets.vspw INFO: loaded 10 frames of 1 videos from {root} (val)" in log
    assert "vss.evaluation.vss_evaluator INFO: Per-class IoU on my_videos_val:" in log
    if device == "cuda":
        assert "vss.engine.setup WARNING: MODEL.DEVICE=cuda but CUDA is not available: using the CPU" in log
    # the logged results are those of the same evaluation run here
    names, values = re.findall(r"copypaste: (.*)", log)[-2:]
    logged = dict(zip(names.split(","), map(float, values.split(","))))
    expected = Trainer.test(cfg, model)["sem_seg"]
    assert {"mIoU", "WIoU", "mVC8"} <= set(logged)
    for name, value in logged.items():
        assert value == pytest.approx(expected[name], abs=1e-4, nan_ok=name == "mVC16"), name

"""A new temporal head needs its own module, its registration and a config, and nothing else.

tests/toy_head holds a toy head written outside the package (head.py), registered by importing it
(__init__.py), and its config (toy.yaml). Training, evaluation with its compute report, FLOP
counts and loading its weights all run through the shared code, which names no head.
"""
from collections import Counter

import pytest
import torch
from detectron2.modeling import build_model

from vss.data.synthetic import generate
from vss.engine import Trainer, VideoPredictor, setup_cfg
from vss.evaluation.compute import frame_kinds, report
from vss.modeling import TEMPORAL_HEAD_REGISTRY
from vss.modeling.postprocess import labels_only
from vss.utils.flops import frame_plan, kind_flops

from conftest import REPO
from toy_head import ReusedLogits

CONFIG = str(REPO / "tests" / "toy_head" / "toy.yaml")
HEIGHT, WIDTH, FRAMES = 48, 64, 5


def test_a_toy_head_trains_evaluates_reports_its_compute_and_loads(tmp_path):
    assert TEMPORAL_HEAD_REGISTRY.get("ReusedLogits") is ReusedLogits
    root = tmp_path / "videos"
    generate(root, train_videos=1, val_videos=1, frames=FRAMES, height=HEIGHT, width=WIDTH)
    opts = ["DATASETS.FOLDERS", str([["toy_train", str(root), "train"], ["toy_val", str(root), "val"]]),
            "DATASETS.TRAIN", "('toy_train',)", "DATASETS.TEST", "('toy_val',)", "MODEL.DEVICE", "cpu",
            "INPUT.MIN_SIZE_TRAIN", f"({HEIGHT},)", "INPUT.CROP.SIZE", "(32,32)", "INPUT.MIN_SIZE_TEST", str(HEIGHT),
            "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "1", "DATALOADER.NUM_WORKERS", "0",
            "OUTPUT_DIR", str(tmp_path / "run")]
    cfg = setup_cfg(CONFIG, opts)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    model = trainer.model
    assert isinstance(model.temporal, ReusedLogits)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer.train()  # one step
    results = Trainer.test(cfg, model)["sem_seg"]

    # the step trained through the head's losses, its own weight included
    assert not torch.equal(model.temporal.temperature, before["temporal.temperature"])
    # the evaluation counted the head's kinds of frames: keys at 0, 2, 4 of 5 frames
    assert results["frames (key frame)"] == 3 and results["frames (reused frame)"] == 2
    assert results["key_frame_share"] == 3 / 5
    with labels_only():
        cost = {kind: flops[""] / 1e9 for kind, flops in kind_flops(model, HEIGHT, WIDTH).items()}
    assert cost["key frame"] > 100 * cost["reused frame"]
    assert abs(results["GFLOPs/frame"] - (3 * cost["key frame"] + 2 * cost["reused frame"]) / 5) < 1e-9
    assert frame_plan(build_model(cfg)).key == "key frame"

    # the saved weights load through the shared loader, the head's own among them
    predictor = VideoPredictor(setup_cfg(CONFIG, opts + ["MODEL.WEIGHTS", str(tmp_path / "run" / "model_final.pth")]))
    loaded = predictor.model.state_dict()
    assert loaded.keys() == model.state_dict().keys()
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())


def test_kinds_a_head_does_not_declare_are_named():
    model = build_model(setup_cfg(CONFIG, ["MODEL.DEVICE", "cpu"]))
    with pytest.raises(ValueError, match=r"frames of kinds \['skipped frame'\] that its frame plan does not list "
                                         r"\(\['key frame', 'reused frame'\]\)"):
        report(model, Counter({"key frame": 2, "skipped frame": 1}), Counter({(32, 32, 32, 32): 3}))
    model.frame_kinds = ["key frame"]
    with pytest.raises(ValueError, match=r"latest call ran 1 frames, not the 2 being evaluated \(a.jpg, ...\)"):
        frame_kinds(model, [{"file_name": "a.jpg"}, {"file_name": "b.jpg"}])

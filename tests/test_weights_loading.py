"""One weight-loading rule for every entry point, from a training run's saved config."""
import logging

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from vss.data.synthetic import generate
from vss.engine import Trainer, VideoPredictor, load_model, load_weights, setup_cfg

from conftest import REPO, load_script, tiny_opts

SYNTHETIC = REPO / "configs" / "synthetic"


def random_flow_file(model, path, seed):
    """A MODEL.MOTION.WEIGHTS file with random values for every tensor of `model`'s flow module."""
    g = torch.Generator().manual_seed(seed)
    torch.save({"model": {k: torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()
                          if k.startswith("temporal.flow.")}}, path)
    return str(path)


@pytest.fixture(scope="module")
def mpvss_run(tmp_path_factory):
    """A 2-step MPVSS training through train_net.py from a per-frame checkpoint and motion weights:
    (its OUTPUT_DIR, the motion weights it started from, a second motion-weights file)."""
    tmp = tmp_path_factory.mktemp("mpvss_run")
    root = tmp / "videos"
    generate(root, train_videos=1, val_videos=1, frames=4, height=32, width=48)
    out = tmp / "out"
    opts = tiny_opts(root, out)
    torch.manual_seed(0)
    per_frame = build_model(setup_cfg(str(SYNTHETIC / "mask2former_tiny.yaml"), opts + ["MODEL.WEIGHTS", ""]))
    DetectionCheckpointer(per_frame, save_dir=str(tmp)).save("per_frame")
    mpvss = build_model(setup_cfg(str(SYNTHETIC / "mpvss_query_flow.yaml"), opts + ["MODEL.WEIGHTS", ""]))
    flow_a, flow_b = random_flow_file(mpvss, tmp / "flow_a.pth", 1), random_flow_file(mpvss, tmp / "flow_b.pth", 2)
    train_net = load_script(REPO / "train_net.py")
    args = train_net.build_parser().parse_args(
        ["--config-file", str(SYNTHETIC / "mpvss_query_flow.yaml"), *opts,
         "MODEL.WEIGHTS", str(tmp / "per_frame.pth"), "MODEL.MOTION.WEIGHTS", flow_a])
    train_net.main(args)
    return out, flow_a, flow_b


def _models(config, opts, monkeypatch):
    """The model each entry point builds from `config` + `opts`, each from another random init."""
    cfg = setup_cfg(config, opts)
    models = {}
    train_net = load_script(REPO / "train_net.py")
    monkeypatch.setattr(train_net.Trainer, "test", classmethod(lambda cls, cfg, model: models.setdefault("eval-only", model)))
    torch.manual_seed(10)
    train_net.main(train_net.build_parser().parse_args(["--config-file", config, "--eval-only", *opts]))
    monkeypatch.undo()
    torch.manual_seed(11)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    models["Trainer"] = trainer.model
    torch.manual_seed(12)
    models["VideoPredictor"] = VideoPredictor(cfg).model
    torch.manual_seed(13)
    models["runs.load_model"] = load_model(config, cfg.MODEL.WEIGHTS, opts)[1]
    return models


@pytest.mark.parametrize("motion", ["saved", "other"])
def test_entry_points_build_the_trained_model_from_a_saved_config(mpvss_run, motion, monkeypatch, tmp_path):
    out, flow_a, flow_b = mpvss_run
    config = str(out / "config.yaml")
    saved = setup_cfg(config)
    assert saved.MODEL.MOTION.WEIGHTS == flow_a  # the saved config keeps the training start's motion weights
    trained = torch.load(out / "model_final.pth", weights_only=True)["model"]
    opts = ["MODEL.WEIGHTS", str(out / "model_final.pth"), "OUTPUT_DIR", str(tmp_path)]
    if motion == "other":
        opts += ["MODEL.MOTION.WEIGHTS", flow_b]
    # applied, either file would change the trained flow module
    for flow in (flow_a, flow_b):
        source = torch.load(flow, weights_only=True)["model"]
        assert any(not torch.equal(source[k], trained[k]) for k in source if k.startswith("temporal.flow.encoder."))
    models = _models(config, opts, monkeypatch)
    assert list(models) == ["eval-only", "Trainer", "VideoPredictor", "runs.load_model"]
    for name, model in models.items():
        state = model.state_dict()
        assert state.keys() == trained.keys(), name
        assert [k for k in trained if not torch.equal(state[k], trained[k])] == [], name


def test_motion_weights_initialise_a_training_start_only(tmp_path, caplog):
    opts = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "OUTPUT_DIR", str(tmp_path)]
    config = str(SYNTHETIC / "mpvss_query_flow.yaml")
    torch.manual_seed(0)
    model = build_model(setup_cfg(config, opts))
    flow = random_flow_file(model, tmp_path / "flow.pth", 3)
    motion = torch.load(flow, weights_only=True)["model"]
    key = "temporal.flow.encoder.conv1.0.conv.weight"
    per_frame = {k: v for k, v in model.state_dict().items() if not k.startswith("temporal.")}
    torch.save({"model": per_frame}, tmp_path / "per_frame.pth")
    torch.save({"model": model.state_dict()}, tmp_path / "whole.pth")

    def start(weights, training):
        cfg = setup_cfg(config, opts + ["MODEL.WEIGHTS", weights, "MODEL.MOTION.WEIGHTS", flow])
        torch.manual_seed(1)
        fresh = build_model(cfg)
        load_weights(fresh, cfg, training=training)
        return fresh.state_dict()[key]

    # a training start from a per-frame checkpoint: the motion weights fill the flow module
    assert torch.equal(start(str(tmp_path / "per_frame.pth"), training=True), motion[key])
    # a checkpoint that holds the flow module keeps it, for training and evaluation alike
    with caplog.at_level(logging.INFO, logger="vss.engine.loading"):
        assert torch.equal(start(str(tmp_path / "whole.pth"), training=True), model.state_dict()[key])
    assert f"MODEL.MOTION.WEIGHTS {flow} not applied to the flow module: MODEL.WEIGHTS" in caplog.text
    assert torch.equal(start(str(tmp_path / "whole.pth"), training=False), model.state_dict()[key])
    # an evaluation without MODEL.WEIGHTS: only a model that is its flow module alone
    with pytest.raises(ValueError, match=r"MODEL.WEIGHTS is empty and MODEL.MOTION.WEIGHTS .*flow\.pth holds only a "
                                         r"flow module: the rest of VideoSegmentor would stay random"):
        start("", training=False)


def test_flownets_evaluates_its_motion_weights_alone(tmp_path):
    config = str(SYNTHETIC / "flownets_pretrain.yaml")
    cfg = setup_cfg(config, ["MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    trained = build_model(cfg)
    torch.save({"model": trained.state_dict()}, tmp_path / "flownets.pth")
    cfg = setup_cfg(config, ["MODEL.DEVICE", "cpu", "MODEL.MOTION.WEIGHTS", str(tmp_path / "flownets.pth")])
    torch.manual_seed(1)
    model = build_model(cfg)
    load_weights(model, cfg, training=False)
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in model.state_dict().items())

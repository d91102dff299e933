"""Config machinery, optimizer construction, initial weights and the trainer's AMP switch."""
import logging

import pytest
import torch
from detectron2.engine import AMPTrainer, SimpleTrainer
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

from vss.config import add_vss_config
from vss.data.datasets import SYNTHETIC_CLASSES
from vss.data.synthetic import generate
from conftest import REPO, Toy
from vss.engine import Trainer, build_optimizer, check_weights, setup_cfg

SYNTHETIC = "configs/synthetic"

def test_upstream_yaml_loads_unchanged(reference_dir):
    # Every key of an upstream Mask2Former config must already exist.
    cfg = get_cfg()
    add_vss_config(cfg)
    cfg.merge_from_file(str(reference_dir / "fixtures" / "mask2former_tiny_swin_config.yaml"))
    assert cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES == 12
    assert cfg.MODEL.SWIN.DEPTHS == [1, 1, 2, 1]
    assert cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME == "MSDeformAttnPixelDecoder"


def test_upstream_defaults_and_video_keys():
    cfg = get_cfg()
    add_vss_config(cfg)
    assert cfg.MODEL.MASK_FORMER.MASK_WEIGHT == 20.0 and cfg.MODEL.MASK_FORMER.DEC_LAYERS == 6
    assert cfg.MODEL.MASK_FORMER.TRAIN_NUM_POINTS == 12544
    assert cfg.INPUT.VIDEO.CLIP_OFFSETS == [-9, -6, -3, 0]
    assert cfg.TEST.VSS.VC_WINDOWS == [8, 16]


def test_setup_cfg_overrides_and_cpu_fallback(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(f"_BASE_: {REPO}/configs/Base-VSS.yaml\nMODEL:\n  DEVICE: cuda\n")
    cfg = setup_cfg(str(path), ["SOLVER.BASE_LR", "0.5"])
    assert cfg.SOLVER.BASE_LR == 0.5 and cfg.is_frozen()
    assert cfg.MODEL.DEVICE == ("cuda" if torch.cuda.is_available() else "cpu")
    assert cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupPolyLR"


def solver_cfg(**kw):
    cfg = get_cfg()
    add_vss_config(cfg)
    cfg.SOLVER.BASE_LR, cfg.SOLVER.WEIGHT_DECAY = 1.0, 0.05
    cfg.SOLVER.WEIGHT_DECAY_NORM, cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0, 0.01
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    for k, v in kw.items():
        setattr(cfg.SOLVER, k, v)
    return cfg


def test_param_groups():
    model = Toy()
    opt = build_optimizer(solver_cfg(), model)
    assert isinstance(opt, torch.optim.AdamW)
    by_param = {id(p): g for g in opt.param_groups for p in g["params"]}
    assert id(model.frozen.weight) not in by_param  # frozen parameters are not optimised
    assert by_param[id(model.backbone[0].weight)]["lr"] == 0.1
    assert by_param[id(model.backbone[1].weight)]["weight_decay"] == 0.0  # norm
    assert by_param[id(model.head.weight)]["lr"] == 1.0
    assert by_param[id(model.head.weight)]["weight_decay"] == 0.05
    assert by_param[id(model.query_embed.weight)]["weight_decay"] == 0.01  # embedding

    cfg = solver_cfg(HEAD_MULTIPLIER=10.0)
    by_param = {id(p): g for g in build_optimizer(cfg, model).param_groups for p in g["params"]}
    assert by_param[id(model.head.weight)]["lr"] == 10.0
    assert by_param[id(model.backbone[0].weight)]["lr"] == 0.1


def test_full_model_clipping_limits_global_norm():
    cfg = solver_cfg(OPTIMIZER="SGD", MOMENTUM=0.0, WEIGHT_DECAY=0.0)
    cfg.SOLVER.WEIGHT_DECAY_NORM = cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    cfg.SOLVER.BACKBONE_MULTIPLIER = 1.0
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.5
    model = Toy()
    opt = build_optimizer(cfg, model)
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.full_like(p, 10.0)
    opt.step()
    after = [p.detach() for p in model.parameters() if p.requires_grad]
    # lr 1 and plain SGD: the update is the clipped gradient, whose global norm is 0.5.
    step = torch.cat([(b - a).flatten() for a, b in zip(after, before)])
    assert torch.isclose(step.norm(), torch.tensor(0.5), atol=1e-5)


def test_setup_registers_dataset_folders(tmp_path):
    generate(tmp_path, train_videos=1, val_videos=1, frames=2, height=32, width=32)  # writes classes.json too
    entries = [["engine_folder_train", str(tmp_path), "train"], ["engine_folder_val", str(tmp_path), "val"]]
    opts = ["DATASETS.FOLDERS", str(entries), "DATASETS.TEST", "('engine_folder_val',)"]
    for _ in range(2):  # tools set up several configs in one process
        cfg = setup_cfg(str(REPO / SYNTHETIC / "mask2former_tiny.yaml"), opts)
    assert cfg.DATASETS.FOLDERS == entries
    assert [r["video_id"] for r in DatasetCatalog.get("engine_folder_val")] == ["val_0000"] * 2
    assert MetadataCatalog.get("engine_folder_train").stuff_classes == SYNTHETIC_CLASSES


def _weights_error(config, opts=(), training=True):
    """check_weights' error for a repository config (paths relative to the repository, as documented)."""
    cfg = setup_cfg(str(REPO / config), list(opts))
    with pytest.raises((FileNotFoundError, ValueError)) as e:
        check_weights(cfg, str(REPO / config), training)
    return str(e.value).replace(f"{REPO}/", "")


@pytest.fixture
def in_repo(monkeypatch, tmp_path):
    # configs name their OUTPUT_DIR relative to where one runs: the repository, with no output/ here
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_mpvss_weights_name_the_per_frame_model_to_train_first(in_repo):
    train_first = ("MPVSS starts from a trained per-frame Mask2Former: train it first with `.venv/bin/python "
                   "train_net.py --config-file configs/synthetic/mask2former_tiny.yaml`, then pass MODEL.WEIGHTS "
                   "output/synthetic/mask2former_tiny/model_final.pth")
    # the config's own MODEL.WEIGHTS, for training and for evaluating Copy
    for config, training in [("mpvss_query_flow.yaml", True), ("mpvss_copy.yaml", False)]:
        message = _weights_error(f"{SYNTHETIC}/{config}", training=training)
        assert message.startswith("MODEL.WEIGHTS output/synthetic/mask2former_tiny/model_final.pth does not exist")
        assert train_first in message
    message = _weights_error(f"{SYNTHETIC}/mpvss_query_flow.yaml", ["MODEL.WEIGHTS", ""])
    assert message.startswith("MODEL.WEIGHTS is empty but configs/synthetic/mpvss_query_flow.yaml trains only")
    assert train_first in message
    message = _weights_error("configs/vspw/mpvss/R50.yaml")
    assert ("train it first with `.venv/bin/python train_net.py --config-file configs/vspw/mask2former/R50.yaml`"
            in message)
    message = _weights_error("configs/vspw/mpvss/R50.yaml", ["MODEL.WEIGHTS", ""])
    assert message.endswith('(or set MODEL.VIDEO.TRAINABLE "[]" MODEL.ALLOW_RANDOM_INIT True to train everything '
                            'from scratch)')
    # training everything from scratch is allowed when asked for
    cfg = setup_cfg(str(REPO / "configs/vspw/mpvss/R50.yaml"),
                    ["MODEL.VIDEO.TRAINABLE", "[]", "MODEL.WEIGHTS", "", "MODEL.ALLOW_RANDOM_INIT", "True"])
    check_weights(cfg, str(REPO / "configs/vspw/mpvss/R50.yaml"), training=True)


RANDOM_START = 'pass MODEL.WEIGHTS "" MODEL.ALLOW_RANDOM_INIT True'


@pytest.mark.parametrize("config,weights,hint", [
    ("configs/vspw/mask2former/R50.yaml", "output/pretrained/R-50.pkl",
     "the per-frame Mask2Former starts from an ImageNet backbone: detectron2's R-50.pkl / R-101.pkl or Swin weights "
     'converted to detectron2\'s format (see projects/MPVSS/README.md, "Initial weights")'),
    ("configs/cityscapes/mask2former/Swin-T.yaml", "output/pretrained/swin_tiny_patch4_window7_224.pkl",
     "the per-frame Mask2Former starts from an ImageNet backbone"),
    ("configs/vspw/tv3s/MiT-B1.yaml", "output/pretrained/mit_b1.pkl",
     "TV3S starts from an ImageNet-pretrained encoder converted with `tools/convert_tv3s.py --encoder`"),
    ("configs/cityscapes/tv3s/MiT-B1.yaml", "output/pretrained/mit_b1.pkl", "TV3S starts from an ImageNet"),
])
def test_vspw_and_cityscapes_training_needs_initial_weights(in_repo, config, weights, hint):
    # the config names the ImageNet checkpoint: missing, it is an error naming it and how to make it
    message = _weights_error(config)
    assert message.startswith(f"MODEL.WEIGHTS {weights} does not exist: {hint}")
    assert message.endswith(f"; to start from random weights instead, {RANDOM_START}")
    # no weights at all: an error too, unless random weights are asked for
    message = _weights_error(config, ["MODEL.WEIGHTS", ""])
    assert message.startswith(f"MODEL.WEIGHTS is empty and {config} sets MODEL.ALLOW_RANDOM_INIT False, so "
                              f"training would start from random weights: {hint}")
    assert message.endswith(f"To start from random weights on purpose, {RANDOM_START}")
    check_weights(setup_cfg(str(REPO / config), ["MODEL.WEIGHTS", "", "MODEL.ALLOW_RANDOM_INIT", "True"]),
                  str(REPO / config), training=True)
    # evaluation keeps its own rule: trained weights, whatever ALLOW_RANDOM_INIT says
    output = setup_cfg(str(REPO / config)).OUTPUT_DIR
    message = _weights_error(config, training=False)
    assert message == (f"MODEL.WEIGHTS {weights} does not exist: evaluation needs trained weights: train first "
                       f"with `.venv/bin/python train_net.py --config-file {config}`, then pass MODEL.WEIGHTS "
                       f"{output}/model_final.pth")
    message = _weights_error(config, ["MODEL.WEIGHTS", "", "MODEL.ALLOW_RANDOM_INIT", "True"], training=False)
    assert message.startswith("MODEL.WEIGHTS is empty, so the model would have random weights: train it first")
    (in_repo / "trained.pth").write_bytes(b"")
    check_weights(setup_cfg(str(REPO / config), ["MODEL.WEIGHTS", "trained.pth"]), str(REPO / config), training=False)


def test_synthetic_configs_train_from_scratch_silently(in_repo):
    for config in ("mask2former_tiny.yaml", "segformer_tiny.yaml", "tv3s_tiny.yaml", "flownets_pretrain.yaml"):
        cfg = setup_cfg(str(REPO / SYNTHETIC / config))
        assert cfg.MODEL.WEIGHTS == "" and cfg.MODEL.ALLOW_RANDOM_INIT
        check_weights(cfg, str(REPO / SYNTHETIC / config), training=True)


def test_evaluation_weights(in_repo):
    # a missing checkpoint of the config's own output: train that config
    message = _weights_error(f"{SYNTHETIC}/mpvss_query_flow.yaml",
                             ["MODEL.WEIGHTS", "output/synthetic/mpvss_query_flow/model_final.pth"], training=False)
    assert message == ("MODEL.WEIGHTS output/synthetic/mpvss_query_flow/model_final.pth does not exist: train "
                       "configs/synthetic/mpvss_query_flow.yaml first: `.venv/bin/python train_net.py --config-file "
                       "configs/synthetic/mpvss_query_flow.yaml` writes it")
    message = _weights_error(f"{SYNTHETIC}/tv3s_tiny.yaml", training=False)
    assert message == ("MODEL.WEIGHTS is empty, so the model would have random weights: train it first with "
                       "`.venv/bin/python train_net.py --config-file configs/synthetic/tv3s_tiny.yaml`, then pass "
                       "MODEL.WEIGHTS output/synthetic/tv3s_tiny/model_final.pth")
    message = _weights_error("configs/vspw/tv3s/MiT-B1.yaml", ["MODEL.WEIGHTS", "output/pretrained/mit_b1.pkl"])
    assert "TV3S starts from an ImageNet-pretrained encoder converted with `tools/convert_tv3s.py --encoder`" in message
    # the FlowNetS evaluation reads MODEL.MOTION.WEIGHTS instead
    config = str(REPO / SYNTHETIC / "flownets_pretrain.yaml")
    check_weights(setup_cfg(config, ["MODEL.MOTION.WEIGHTS", "flow.pth"]), config, training=False)
    # TV3S from scratch (the synthetic config) trains; an existing file always passes
    config = str(REPO / SYNTHETIC / "tv3s_tiny.yaml")
    check_weights(setup_cfg(config), config, training=True)
    (in_repo / "w.pth").write_bytes(b"")
    check_weights(setup_cfg(config, ["MODEL.WEIGHTS", "w.pth"]), config, training=False)


def tiny_amp_cfg(tmp_path):
    """The tiny synthetic Mask2Former with SOLVER.AMP.ENABLED True, 2 iterations on the CPU."""
    root = tmp_path / "videos"
    generate(root, train_videos=1, val_videos=1, frames=2, height=48, width=64)
    name = f"amp_{tmp_path.name}"  # one registration per test
    opts = ["DATASETS.FOLDERS", str([[name, str(root), "train"]]), "DATASETS.TRAIN", f"('{name}',)",
            "DATASETS.TEST", "()", "SOLVER.AMP.ENABLED", "True",
            "MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TRAIN", "(48,)", "INPUT.CROP.SIZE", "(32,32)",
            "SOLVER.IMS_PER_BATCH", "1", "SOLVER.MAX_ITER", "2", "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "64",
            "DATALOADER.NUM_WORKERS", "0", "SEED", "0", "OUTPUT_DIR", str(tmp_path / "out")]
    return setup_cfg(str(REPO / SYNTHETIC / "mask2former_tiny.yaml"), opts)


def test_amp_config_trains_in_float32_off_cuda(tmp_path, caplog):
    # The release configs keep SOLVER.AMP.ENABLED True; detectron2's AMPTrainer asserts CUDA.
    cfg = tiny_amp_cfg(tmp_path)
    with caplog.at_level(logging.INFO, logger="vss.engine.trainer"):
        trainer = Trainer(cfg)
    assert ("SOLVER.AMP.ENABLED is True but the model runs on cpu: training in float32 (AMP needs CUDA)"
            in caplog.text)
    assert all(r.levelno == logging.INFO for r in caplog.records if "AMP" in r.getMessage())
    assert type(trainer._trainer) is SimpleTrainer and cfg.SOLVER.AMP.ENABLED  # the caller's config unchanged
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert trainer.iter == 2  # both steps done
    after = trainer.model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any(k.startswith("sem_seg_head.") for k in changed) and any(k.startswith("backbone.") for k in changed)
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())


@pytest.mark.filterwarnings("ignore:torch.cuda.amp.GradScaler is enabled, but CUDA is not available")
def test_an_amp_run_resumes_a_float32_checkpoint(tmp_path, monkeypatch, caplog):
    # a checkpoint of a CPU run (no gradient-scaler state) resumed where AMP is on: the scaler starts afresh
    cfg = tiny_amp_cfg(tmp_path)
    saved = Trainer(cfg).state_dict()
    assert "grad_scaler" not in saved["_trainer"]
    monkeypatch.setattr("vss.engine.trainer.without_amp_off_cuda", lambda c: c)  # as on a CUDA machine
    amp = Trainer(cfg)
    assert isinstance(amp._trainer, AMPTrainer)
    scale = amp._trainer.grad_scaler.state_dict()
    with caplog.at_level(logging.INFO, logger="vss.engine.trainer"):
        amp.load_state_dict(saved)
    assert "the checkpoint holds no AMP gradient-scaler state: it starts afresh" in caplog.text
    assert amp._trainer.grad_scaler.state_dict() == scale  # (without CUDA, the disabled scaler's {})
    assert amp._trainer.optimizer.state_dict()["param_groups"] == saved["_trainer"]["optimizer"]["param_groups"]


@pytest.mark.slow
def test_evaluate_any_vc_windows_and_several_test_sets(tmp_path):
    from vss.engine import METRICS, evaluate, metric_names

    assert METRICS == metric_names(setup_cfg(str(REPO / SYNTHETIC / "mask2former_tiny.yaml")))
    generate(tmp_path / "a", train_videos=1, val_videos=1, frames=9, height=32, width=48, seed=0)
    generate(tmp_path / "b", train_videos=1, val_videos=2, frames=5, height=32, width=48, seed=1)
    sets = [f"runs_{tmp_path.name}_{n}" for n in "ab"]
    opts = ["DATASETS.FOLDERS", str([[sets[0], str(tmp_path / "a"), "val"], [sets[1], str(tmp_path / "b"), "val"]]),
            "DATASETS.TEST", str(tuple(sets)), "TEST.VSS.VC_WINDOWS", "[4, 8]", "MODEL.DEVICE", "cpu",
            "INPUT.MIN_SIZE_TEST", "32", "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(tmp_path / "out")]
    config = str(REPO / SYNTHETIC / "mask2former_tiny.yaml")
    torch.manual_seed(0)
    both = evaluate("tiny", config, "", opts, log=lambda line: None)
    assert list(both) == sets
    assert all(list(r) == ["mIoU", "WIoU", "mVC4", "mVC8"] for r in both.values())
    # 5-frame videos have no 8-frame window; a 9-frame one has
    assert both[sets[1]]["mVC8"] != both[sets[1]]["mVC8"] and both[sets[0]]["mVC8"] >= 0
    # one test set: its metrics directly, the same numbers
    torch.manual_seed(0)
    one = evaluate("tiny", config, "", opts + ["DATASETS.TEST", f"('{sets[1]}',)"], log=lambda line: None)
    assert list(one) == ["mIoU", "WIoU", "mVC4", "mVC8"]
    assert one["mIoU"] == pytest.approx(both[sets[1]]["mIoU"]) and one["mVC4"] == pytest.approx(both[sets[1]]["mVC4"])


def test_device_is_the_best_present_silently(tmp_path, caplog, monkeypatch):
    from vss.engine import setup

    best = "cuda" if torch.cuda.is_available() else "cpu"
    config = str(REPO / SYNTHETIC / "mask2former_tiny.yaml")
    with caplog.at_level(logging.WARNING):
        assert setup_cfg(config).MODEL.DEVICE == best
    assert caplog.records == []
    # an explicit CUDA device without CUDA: the CPU, with one warning per process
    monkeypatch.setattr(setup, "_warned", set())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="vss.engine.setup"):
        for _ in range(3):
            assert setup_cfg(config, ["MODEL.DEVICE", "cuda"]).MODEL.DEVICE == "cpu"
    assert [r.getMessage() for r in caplog.records] == ["MODEL.DEVICE=cuda but CUDA is not available: using the CPU"]


def test_the_detectron2_idiom_builds_a_model_on_the_best_device():
    from detectron2.modeling import build_model

    cfg = get_cfg()
    add_vss_config(cfg)
    cfg.merge_from_file(str(REPO / SYNTHETIC / "mpvss_query_flow.yaml"))
    model = build_model(cfg)
    best = "cuda" if torch.cuda.is_available() else "cpu"
    assert cfg.MODEL.DEVICE == best and next(model.parameters()).device.type == best


class ToyWeightsHead(torch.nn.Module):
    """A temporal head that declares only what its training starts from."""
    weights_start = "the toy head starts from toy.pth (see its README)"


def test_a_new_temporal_head_declares_its_weights_hint(in_repo):
    from vss.modeling import TEMPORAL_HEAD_REGISTRY

    if "ToyWeightsHead" not in TEMPORAL_HEAD_REGISTRY:
        TEMPORAL_HEAD_REGISTRY.register(ToyWeightsHead)
    config = f"{SYNTHETIC}/mpvss_query_flow.yaml"
    toy = ["MODEL.VIDEO.TEMPORAL_HEAD", "ToyWeightsHead", "MODEL.VIDEO.TRAINABLE", "[]"]
    message = _weights_error(config, toy + ["MODEL.WEIGHTS", "", "MODEL.ALLOW_RANDOM_INIT", "False"])
    assert "training would start from random weights: the toy head starts from toy.pth (see its README)." in message
    message = _weights_error(config, toy + ["MODEL.WEIGHTS", "toy.pth"])
    assert message == ("MODEL.WEIGHTS toy.pth does not exist: the toy head starts from toy.pth (see its README); "
                       f"to start from random weights instead, {RANDOM_START}")

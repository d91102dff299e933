"""Config machinery and optimizer construction."""
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

from vss.config import add_vss_config
from vss.data.datasets import SYNTHETIC_CLASSES
from vss.data.synthetic import generate
from conftest import REPO
from vss.engine import build_optimizer, check_weights, setup_cfg

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


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.GroupNorm(2, 4))
        self.head = torch.nn.Linear(4, 2)
        self.query_embed = torch.nn.Embedding(3, 4)
        self.frozen = torch.nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


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
    # training everything from scratch is allowed
    cfg = setup_cfg(str(REPO / "configs/vspw/mpvss/R50.yaml"), ["MODEL.VIDEO.TRAINABLE", "[]"])
    check_weights(cfg, str(REPO / "configs/vspw/mpvss/R50.yaml"), training=True)


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

"""Config machinery and optimizer construction."""
import torch
from detectron2.config import get_cfg

from vss.config import add_vss_config
from conftest import REPO
from vss.engine import build_optimizer, setup_cfg




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

"""Per-parameter lr and weight decay (SOLVER.CUSTOM_KEYS and the default rules) against the
releases' optimizer constructors, tensor by tensor."""
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from vss.config import add_vss_config
from vss.conversion.tv3s import KEY_MAP
from vss.engine import setup_cfg
from vss.engine.optimizer import custom_key_rules, param_groups
from vss.modeling.tv3s import RMSNorm

from conftest import REPO, Toy, read_key_list


def by_name(cfg, model):
    """{parameter name: (lr, weight decay)} of our optimizer's groups."""
    groups = {id(g["params"][0]): g for g in param_groups(cfg, model)}
    return {n: (groups[id(p)]["lr"], groups[id(p)]["weight_decay"]) for n, p in model.named_parameters()
            if id(p) in groups}


def solver_cfg(custom_keys):
    cfg = get_cfg()
    add_vss_config(cfg)
    s = cfg.SOLVER
    s.BASE_LR, s.WEIGHT_DECAY, s.WEIGHT_DECAY_NORM, s.WEIGHT_DECAY_EMBED = 1.0, 0.05, 0.0, 0.01
    s.BACKBONE_MULTIPLIER, s.CUSTOM_KEYS = 0.1, custom_keys
    return cfg


def meta_model(config, opts=()):
    cfg = setup_cfg(str(REPO / config), ["MODEL.DEVICE", "meta", *opts])
    with torch.device("meta"):
        return cfg, build_model(cfg)


# ---- the mechanism ------------------------------------------------------------------------

def test_custom_keys_take_the_longest_key_then_the_first_alphabetically():
    rules = custom_key_rules([["norm", 1, 0], ["head", 10, 1], ["pos_block", 1, 0], ["bb", 2, 3]])
    assert [key for key, _, _ in rules] == ["pos_block", "head", "norm", "bb"]

    model = Toy()  # backbone.0 conv, backbone.1 GroupNorm, head Linear, query_embed Embedding
    cfg = solver_cfg([["backbone.1", 3.0, 2.0], ["head", 10.0, 0.5], ["backbone", 2.0, 0.0]])
    got = by_name(cfg, model)
    assert got["backbone.1.weight"] == (3.0, 0.1)  # the longer key wins, the norm rule is not applied
    assert got["backbone.0.weight"] == (2.0, 0.0)  # BACKBONE_MULTIPLIER 0.1 is not applied
    assert got["head.weight"] == (10.0, 0.025)
    assert got["query_embed.weight"] == (1.0, 0.01)  # matches no key: the default rules
    assert "frozen.weight" not in got


@pytest.mark.parametrize("entries", [[["norm", 1.0]], [[1, 1.0, 0.0]], [["", 1.0, 0.0]], [["a", 1, 0], ["a", 2, 0]],
                                     [["norm", "x", 0.0]]])
def test_bad_custom_keys_are_errors(entries):
    with pytest.raises(ValueError, match="SOLVER.CUSTOM_KEYS"):
        custom_key_rules(entries)


# ---- TV3S: mmcv 1.3's DefaultOptimizerConstructor on the release's names ---------------------

# custom_keys of every TV3S config of the release (e.g. local_configs/tv3s/B1/
# tv3s_realshift_w20_s10.b1.480x480.vspw2.160k.py:35-39): {key: (lr_mult, decay_mult)}
RELEASE_KEYS = {"pos_block": (1.0, 0.0), "norm": (1.0, 0.0), "head": (10.0, 1.0)}


def release_rule(name, lr, wd):
    """mmcv 1.3 add_params with only custom_keys: the longest key in the name (ties: the first
    alphabetically) sets both multipliers; a name matching none keeps lr and wd (no norm or bias
    multipliers are configured)."""
    keys = sorted(sorted(RELEASE_KEYS), key=len, reverse=True)
    key = next((k for k in keys if k in name), None)
    if key is None:
        return lr, wd
    return lr * RELEASE_KEYS[key][0], wd * RELEASE_KEYS[key][1]


def official_name(ours):
    """tools/convert_tv3s.py's key map, read backwards."""
    for official, prefix in KEY_MAP:
        if prefix is not None and ours.startswith(prefix):
            return official + ours[len(prefix):]
    raise AssertionError(f"{ours} has no official name")


@pytest.mark.parametrize("config,lr,wd", [
    # (release lr, weight decay): O: ...b1.480x480.vspw2.160k.py:35, b2 :35, b5 :35, swint/swins :35,
    # b1.1024x1024.city.160k.py:36
    ("configs/vspw/tv3s/MiT-B1.yaml", 6e-5, 0.01),
    ("configs/vspw/tv3s/MiT-B2.yaml", 6e-5, 0.01),
    ("configs/vspw/tv3s/MiT-B5.yaml", 3e-5, 0.01),
    ("configs/vspw/tv3s/Swin-T.yaml", 1e-5, 0.05),
    ("configs/vspw/tv3s/Swin-S.yaml", 1e-5, 0.05),
    ("configs/cityscapes/tv3s/MiT-B1.yaml", 6e-5, 0.01),
])
def test_tv3s_configs_give_every_tensor_the_releases_lr_and_decay(config, lr, wd):
    cfg, model = meta_model(config)
    got = by_name(cfg, model)
    assert len(got) == len(list(model.parameters()))
    wrong = {n: (v, release_rule(official_name(n), lr, wd)) for n, v in got.items()
             if v != pytest.approx(release_rule(official_name(n), lr, wd), rel=1e-12)}
    assert wrong == {}
    # not vacuous: the head's norms (fusion BN, 8 Mamba RMSNorms, the final one) decay, the
    # encoder's do not, and the head learns 10x faster
    head_norms = [n for n, m in model.named_modules() if isinstance(m, (RMSNorm, torch.nn.modules.batchnorm._BatchNorm))
                  and not n.startswith("backbone")]
    assert len(head_norms) == 10 and all(got[f"{n}.weight"] == pytest.approx((10 * lr, wd)) for n in head_norms)
    encoder_norms = [n for n, m in model.named_modules() if isinstance(m, torch.nn.LayerNorm)]
    assert encoder_norms and all(got[f"{n}.weight"] == pytest.approx((lr, 0.0)) for n in encoder_norms)
    tables = [n for n in got if n.endswith("relative_position_bias_table")]
    assert all(got[n] == pytest.approx((lr, wd)) for n in tables) and (len(tables) > 0) == ("Swin" in config)


def test_official_names_of_mit_b1_are_the_release_key_lists(reference_dir):
    """The reversed key map lands on real release names: every trainable tensor of TV3S MiT-B1."""
    official = read_key_list(reference_dir / "tv3s_keys_b1.txt")
    official.update(read_key_list(reference_dir / "tv3s_mitb1_keys.txt"))
    _, model = meta_model("configs/vspw/tv3s/MiT-B1.yaml")
    names = {official_name(n): tuple(p.shape) for n, p in model.named_parameters()}
    assert {n: official.get(n) for n in names} == names


def test_without_custom_keys_the_head_norms_take_the_norm_decay():
    cfg, model = meta_model("configs/vspw/tv3s/MiT-B1.yaml", ["SOLVER.CUSTOM_KEYS", "[]"])
    got = by_name(cfg, model)
    assert got["temporal.vs.norm_f.weight"] == pytest.approx((6e-4, 0.0))
    assert got["temporal.vs.layers.0.mixer.in_proj.weight"] == pytest.approx((6e-4, 0.01))


# ---- Mask2Former / MPVSS: detectron2-Mask2Former's build_optimizer ---------------------------

RELEASE_NORMS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.SyncBatchNorm,
                 torch.nn.GroupNorm, torch.nn.InstanceNorm1d, torch.nn.InstanceNorm2d, torch.nn.InstanceNorm3d,
                 torch.nn.LayerNorm, torch.nn.LocalResponseNorm)


def mask2former_rule(cfg, model):
    """The MPVSS release's build_optimizer (O: train_net_vss.py:185-208; upstream Mask2Former's
    train_net.py is the same): {name: (lr, weight decay)} of the trainable parameters."""
    s = cfg.SOLVER
    out, seen = {}, set()
    for module_name, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            lr = s.BASE_LR * (s.BACKBONE_MULTIPLIER if "backbone" in module_name else 1.0)
            wd = s.WEIGHT_DECAY
            if "relative_position_bias_table" in name or "absolute_pos_embed" in name:
                wd = 0.0
            if isinstance(module, RELEASE_NORMS):
                wd = s.WEIGHT_DECAY_NORM
            if isinstance(module, torch.nn.Embedding):
                wd = s.WEIGHT_DECAY_EMBED
            out[f"{module_name}.{name}" if module_name else name] = (lr, wd)
    return out


@pytest.mark.parametrize("config", [
    "configs/vspw/mask2former/R50.yaml", "configs/vspw/mask2former/Swin-T.yaml", "configs/vspw/mpvss/R50.yaml",
    "configs/cityscapes/mask2former/R50.yaml", "configs/cityscapes/mask2former/Swin-T.yaml",
])
def test_mask2former_configs_follow_the_releases_build_optimizer(config):
    cfg, model = meta_model(config)
    got = by_name(cfg, model)
    expected = mask2former_rule(cfg, model)
    assert set(got) == set(expected)
    assert {n: v for n, v in got.items() if v != pytest.approx(expected[n], rel=1e-12)} == {}
    level_embed = "sem_seg_head.pixel_decoder.transformer.level_embed"
    if level_embed in got:  # trained: the per-frame model (MPVSS freezes it)
        assert got[level_embed][1] == cfg.SOLVER.WEIGHT_DECAY > 0


def test_mask2former_level_embed_without_the_key_takes_the_embedding_decay():
    cfg, model = meta_model("configs/vspw/mask2former/R50.yaml", ["SOLVER.CUSTOM_KEYS", "[]"])
    assert by_name(cfg, model)["sem_seg_head.pixel_decoder.transformer.level_embed"][1] == 0.0

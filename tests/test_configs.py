"""Every shipped config loads, and the paper configs build the published architectures."""

import pytest
import torch
from detectron2.modeling import build_model

from conftest import REPO, read_key_list
from vss.engine import setup_cfg

CONFIGS = sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS)
def test_config_loads(config):
    cfg = setup_cfg(str(REPO / config))
    assert cfg.MODEL.META_ARCHITECTURE


def build_on_meta(config):
    cfg = setup_cfg(str(REPO / config), ["MODEL.DEVICE", "meta"])
    with torch.device("meta"):
        return build_model(cfg)




@pytest.mark.parametrize("config,key_file", [
    ("configs/vspw/mask2former/R50.yaml", "keys_r50.txt"),
    ("configs/vspw/mask2former/R101.yaml", "keys_r101.txt"),
    ("configs/vspw/mask2former/Swin-T.yaml", "keys_swint.txt"),
    ("configs/vspw/mask2former/Swin-S.yaml", "keys_swins.txt"),
    ("configs/vspw/mask2former/Swin-B-384.yaml", "keys_swinb.txt"),
    ("configs/vspw/mask2former/Swin-L-384.yaml", "keys_swinl.txt"),
    ("configs/cityscapes/mask2former/R50.yaml", "keys_r50_c19.txt"),
])
def test_mask2former_configs_match_upstream_checkpoints(config, key_file, reference_dir):
    model = build_on_meta(config)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == read_key_list(reference_dir / "mask2former_keys" / key_file)

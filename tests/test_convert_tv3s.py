"""tools/convert_tv3s.py on a synthetic official checkpoint built from the release's key lists."""
import argparse
import pickle
import re
from collections import OrderedDict

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from vss.conversion import tv3s as conversion
from vss.engine import setup_cfg

from conftest import REPO, load_script, read_key_list

B1 = str(REPO / "configs" / "vspw" / "tv3s" / "MiT-B1.yaml")


cli = load_script(REPO / "tools" / "convert_tv3s.py")




@pytest.fixture(scope="module")
def official(reference_dir):
    """A release-layout MiT-B1 TV3S state dict of random values (every key of the two lists)."""
    g = torch.Generator().manual_seed(0)
    keys = read_key_list(reference_dir / "tv3s_mitb1_keys.txt")
    keys.update(read_key_list(reference_dir / "tv3s_keys_b1.txt"))
    state = OrderedDict()
    for name, shape in keys.items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(1234)
        elif name.endswith("running_var"):
            state[name] = torch.rand(shape, generator=g) + 0.5
        else:
            state[name] = torch.randn(shape, generator=g)
    return state


@pytest.fixture(scope="module")
def b1_cfg():
    return setup_cfg(B1, ["MODEL.DEVICE", "cpu"])


@pytest.fixture(scope="module")
def b1_keys(b1_cfg):
    return conversion.model_keys(b1_cfg)


def fresh_model(cfg):
    torch.manual_seed(1)
    return build_model(cfg).eval()


def test_release_checkpoint_loads_strictly_with_every_value(official, b1_cfg, tmp_path):
    src = tmp_path / "tv3s_b1_official.pth"
    # mmseg's layout: weights under "state_dict" beside meta information
    torch.save({"meta": {"CLASSES": ("wall", "ceiling"), "iter": 160000}, "state_dict": official}, src)
    dst = tmp_path / "converted.pth"
    cli.main(["--config-file", B1, str(src), str(dst)])

    model = fresh_model(b1_cfg)
    model.load_state_dict(torch.load(dst)["model"], strict=True)
    ours = model.state_dict()
    assert len(ours) == len(official) - 2  # conv_seg weight and bias dropped
    # The named pairs spell out the map; every official tensor then reached its place.
    pairs = {
        "backbone.block4.1.mlp.fc2.weight": "backbone.block4.1.mlp.fc2.weight",
        "sem_seg_head.linear_c1.proj.weight": "decode_head.linear_c1.proj.weight",  # 64 -> 256, finest level
        "sem_seg_head.linear_c3.proj.weight": "decode_head.linear_c3.proj.weight",  # 320 -> 256
        "sem_seg_head.linear_fuse.conv.weight": "decode_head.linear_fuse.conv.weight",
        "sem_seg_head.linear_fuse.bn.running_var": "decode_head.linear_fuse.bn.running_var",
        "sem_seg_head.linear_fuse.bn.num_batches_tracked": "decode_head.linear_fuse.bn.num_batches_tracked",
        "sem_seg_head.linear_pred.bias": "decode_head.linear_pred.bias",
        "temporal.vs.layers.0.mixer.in_proj.weight": "decode_head.vs.layers.0.mixer.in_proj.weight",
        "temporal.vs.layers.7.mixer.A_log": "decode_head.vs.layers.7.mixer.A_log",
        "temporal.vs.layers.5.norm.weight": "decode_head.vs.layers.5.norm.weight",
        "temporal.vs.norm_f.weight": "decode_head.vs.norm_f.weight",
        "temporal.linear_pred2.weight": "decode_head.linear_pred2.weight",
    }
    for ours_name, official_name in pairs.items():
        assert torch.equal(ours[ours_name], official[official_name]), ours_name
    assert int(model.sem_seg_head.linear_fuse.bn.num_batches_tracked) == 1234
    assert torch.equal(model.temporal.vs.layers[7].mixer.A_log, official["decode_head.vs.layers.7.mixer.A_log"])
    remaining = sorted(official[k].sum().item() for k in official if not k.startswith("decode_head.conv_seg."))
    assert sorted(v.sum().item() for v in ours.values()) == remaining


@pytest.mark.parametrize("suffix", [".pth", ".pkl"])
def test_detectron2_checkpointer_loads_both_formats(official, b1_cfg, b1_keys, tmp_path, suffix):
    converted = conversion.convert(official, expected=b1_keys)
    path = str(tmp_path / f"model{suffix}")
    conversion.save(converted, path)
    model = fresh_model(b1_cfg)
    incompatible = DetectionCheckpointer(model)._load_model(DetectionCheckpointer(model)._load_file(path))
    assert incompatible.missing_keys == [] and incompatible.unexpected_keys == []
    assert incompatible.incorrect_shapes == []
    ours = model.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in converted.items())


def test_round_trip_keeps_values_dtypes_and_order(official, b1_keys, tmp_path):
    converted = conversion.convert(official, expected=b1_keys)
    conversion.save(converted, str(tmp_path / "a.pth"))
    conversion.save(converted, str(tmp_path / "a.pkl"))
    from_pth = torch.load(tmp_path / "a.pth")["model"]
    with open(tmp_path / "a.pkl", "rb") as f:
        data = pickle.load(f)
    assert data["__author__"] == conversion.AUTHOR  # detectron2 0.6 reads it as model-zoo format
    from_pkl = data["model"]
    assert list(from_pth) == list(from_pkl) == list(converted)
    for k, v in converted.items():
        assert from_pth[k].dtype == v.dtype and torch.equal(from_pth[k], v), k
        assert isinstance(from_pkl[k], np.ndarray) and torch.equal(torch.from_numpy(from_pkl[k]), v), k
    assert from_pkl["sem_seg_head.linear_fuse.bn.num_batches_tracked"].dtype == np.int64


@pytest.mark.parametrize("extra", ["decode_head.linear_pred3.weight", "decode_head.aux_head.conv.weight",
                                   "module.backbone.norm4.weight"])
def test_unknown_key_is_an_error_naming_it(official, extra):
    state = OrderedDict(official)
    state[extra] = torch.zeros(3)
    with pytest.raises(ValueError, match=f"1 keys match no prefix.*{extra}"):
        conversion.convert(state, source="x.pth")


def test_missing_key_is_an_error_naming_ours(official, b1_keys):
    state = OrderedDict((k, v) for k, v in official.items() if k != "decode_head.vs.layers.7.norm.weight")
    with pytest.raises(ValueError, match=r"not produced \(1\): temporal\.vs\.layers\.7\.norm\.weight$"):
        conversion.convert(state, expected=b1_keys)


def test_other_shapes_and_extra_layers_are_errors(official, b1_keys, b1_cfg):
    state = OrderedDict(official)
    state["decode_head.linear_pred.weight"] = torch.zeros(150, 256, 1, 1)  # ADE20K's classes
    with pytest.raises(ValueError, match=r"sem_seg_head\.linear_pred\.weight \(150, 256, 1, 1\) "
                                         r"\(ours \(124, 256, 1, 1\)\)"):
        conversion.convert(state, expected=b1_keys)

    cfg = b1_cfg.clone()
    cfg.defrost()
    cfg.MODEL.TV3S.NUM_BLOCKS = 3  # 6 Mamba layers: the release's layers 6 and 7 have no place
    with pytest.raises(ValueError, match=r"not in our model \(20\): temporal\.vs\.layers\.6\.mixer\.A_log"):
        conversion.convert(official, expected=conversion.model_keys(cfg))


def test_imagenet_encoder_converts_to_the_backbone(official, b1_cfg, tmp_path):
    imagenet = OrderedDict((k[len("backbone."):], v) for k, v in official.items() if k.startswith("backbone."))
    imagenet["head.weight"] = torch.zeros(1000, 512)  # the ImageNet classifier
    imagenet["head.bias"] = torch.zeros(1000)
    src, dst = tmp_path / "mit_b1.pth", tmp_path / "mit_b1.pkl"
    torch.save(imagenet, src)
    cli.main(["--encoder", "--config-file", B1, str(src), str(dst)])

    model = fresh_model(b1_cfg)
    checkpointer = DetectionCheckpointer(model)
    incompatible = checkpointer._load_model(checkpointer._load_file(str(dst)))
    assert incompatible.unexpected_keys == [] and incompatible.incorrect_shapes == []
    # (BN fills a missing num_batches_tracked itself, without reporting it)
    heads = [k for k in model.state_dict() if not k.startswith("backbone.") and "num_batches" not in k]
    assert incompatible.missing_keys == heads and len(heads) == 98
    assert torch.equal(model.backbone.patch_embed1.proj.weight, official["backbone.patch_embed1.proj.weight"])

    # a full TV3S checkpoint is not an encoder: its keys would land under backbone.decode_head.*
    with pytest.raises(ValueError, match=r"not produced \(176\).*not in our model \(277\): backbone\.backbone\.patch_embed1"):
        torch.save(official, src)
        cli.main(["--encoder", "--config-file", B1, str(src), str(dst)])


def test_files_with_objects_need_trust(tmp_path):
    path = tmp_path / "ckpt.pth"
    state = {"backbone.norm4.weight": torch.ones(2)}
    torch.save({"meta": {"args": argparse.Namespace(lr=1)}, "state_dict": state}, path)
    with pytest.raises(ValueError, match=f"{re.escape(str(path))}: holds objects besides tensors.*--trusted"):
        conversion.load_state_dict(path)
    assert torch.equal(conversion.load_state_dict(path, trusted=True)["backbone.norm4.weight"], torch.ones(2))

    torch.save({"meta": {}, "weights": [torch.ones(1)]}, path)
    with pytest.raises(ValueError, match=r"expected a state dict of tensors.*found \['meta', 'weights'\]"):
        conversion.load_state_dict(path)
    with pytest.raises(ValueError, match="must end in .pth or .pkl"):
        conversion.save(state, str(tmp_path / "model.bin"))


def test_options_anywhere_on_the_line_and_overrides_after_the_files(official, tmp_path):
    src, dst = tmp_path / "official.pth", tmp_path / "converted.pth"
    # mmseg's meta may hold objects the weights-only loader refuses: --trusted is needed
    torch.save({"meta": {"args": argparse.Namespace(lr=1)}, "state_dict": official}, src)
    with pytest.raises(ValueError, match="--trusted"):
        cli.main([str(src), str(dst), "--config-file", B1])
    cli.main([str(src), str(dst), "--trusted", "--config-file", B1])
    assert len(torch.load(dst)["model"]) == len(official) - 2
    # overrides reach the config (19 classes: the classifiers no longer fit), options after them too
    with pytest.raises(ValueError, match=r"of another shape \(4\): sem_seg_head\.linear_pred\.weight"):
        cli.main([str(src), str(dst), "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "19", "--trusted",
                           "--config-file", B1])
    # after `--`, a value starting with "-" is a value
    cli.main(["--trusted", str(src), str(dst), "--config-file", B1, "--", "INPUT.SIZE_DIVISIBILITY", "-1"])

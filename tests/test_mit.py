import math
from pathlib import Path

import pytest
import torch

from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, build_model

from vss import add_vss_config
from vss.engine import setup_cfg
from vss.modeling.backbone.mit import MIT_VARIANTS, EfficientSelfAttention, MiT
from vss.modeling.segformer_head import SegFormerHead
from conftest import read_key_list

REPO = Path(__file__).resolve().parents[1]
# Published widths and depths of MiT-B0..B5 (SegFormer).
PUBLISHED = {
    "B0": ((32, 64, 160, 256), (2, 2, 2, 2)),
    "B1": ((64, 128, 320, 512), (2, 2, 2, 2)),
    "B2": ((64, 128, 320, 512), (3, 4, 6, 3)),
    "B3": ((64, 128, 320, 512), (3, 4, 18, 3)),
    "B4": ((64, 128, 320, 512), (3, 8, 27, 3)),
    "B5": ((64, 128, 320, 512), (3, 6, 40, 3)),
}
MIT_B1_PARAMS = 13_151_424
# Official TV3S decode head (124 classes) without the unused conv_seg: the part of
# 4,109,940 that does not depend on the MiT variant (B1..B5 share the widths).
TV3S_HEAD_PARAMS = 4_109_940


def mit_cfg(variant="B0", **head):
    cfg = get_cfg()
    add_vss_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "MiT"
    cfg.MODEL.MIT.VARIANT = variant
    cfg.MODEL.MIT.DROP_PATH_RATE = 0.0
    cfg.MODEL.META_ARCHITECTURE = "SemanticSegmentor"
    cfg.MODEL.SEM_SEG_HEAD.NAME = "SegFormerHead"
    cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 5
    cfg.MODEL.SEM_SEG_HEAD.NORM = "BN"
    cfg.MODEL.SEM_SEG_HEAD.EMBED_DIM = 32
    cfg.MODEL.DEVICE = "cpu"
    for key, value in head.items():
        cfg.MODEL.SEM_SEG_HEAD[key] = value
    return cfg




def random_proj_loss(outputs):
    # A plain sum of LayerNorm outputs has zero gradient; project on fixed random weights.
    gen = torch.Generator().manual_seed(1)
    return sum((v * torch.randn(v.shape, generator=gen)).sum() for v in outputs.values())


def b1_shapes():
    return {f"res{i + 2}": ShapeSpec(channels=c, stride=4 * 2 ** i) for i, c in enumerate((64, 128, 320, 512))}


# ---- backbone -------------------------------------------------------------------------

def test_mit_b1_state_dict_equals_official_keys(reference_dir):
    expected = read_key_list(reference_dir / "tv3s_mitb1_keys.txt", "backbone.")
    with torch.device("meta"):
        model = build_backbone(mit_cfg("B1"))
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert list(ours) == list(expected)  # same names, same registration order
    assert ours == expected
    assert sum(p.numel() for p in model.parameters()) == MIT_B1_PARAMS


@pytest.mark.parametrize("variant", sorted(PUBLISHED))
def test_variants_have_published_widths_and_depths(variant):
    dims, depths = PUBLISHED[variant]
    with torch.device("meta"):
        model = build_backbone(mit_cfg(variant))
    assert [len(getattr(model, f"block{i + 1}")) for i in range(4)] == list(depths)
    assert [getattr(model, f"patch_embed{i + 1}").proj.out_channels for i in range(4)] == list(dims)
    assert {n: s.channels for n, s in model.output_shape().items()} == dict(zip(["res2", "res3", "res4", "res5"], dims))
    assert [s.stride for s in model.output_shape().values()] == [4, 8, 16, 32]
    heads = [getattr(model, f"block{i + 1}")[0].attn.num_heads for i in range(4)]
    srs = [getattr(model, f"block{i + 1}")[0].attn.sr_ratio for i in range(4)]
    assert heads == [1, 2, 5, 8] and srs == [8, 4, 2, 1]


@pytest.mark.parametrize("variant, published_m", [("B1", 17.3), ("B2", 28.3), ("B5", 85.6)])
def test_variant_sizes_match_the_published_tv3s_models(variant, published_m):
    # TV3S's published sizes = MiT encoder + its 4.11M decode head.
    with torch.device("meta"):
        model = build_backbone(mit_cfg(variant))
    total = sum(p.numel() for p in model.parameters()) + TV3S_HEAD_PARAMS
    assert round(total / 1e6, 1) == published_m


def test_layer_hyper_parameters():
    with torch.device("meta"):
        model = MiT(**MIT_VARIANTS["B1"], drop_path_rate=0.1)
    embeds = [getattr(model, f"patch_embed{i + 1}").proj for i in range(4)]
    assert [(e.kernel_size, e.stride, e.padding) for e in embeds] == [((7, 7), (4, 4), (3, 3))] + [
        ((3, 3), (2, 2), (1, 1))] * 3
    block = model.block1[0]
    assert block.norm1.eps == block.norm2.eps == model.norm1.eps == 1e-6
    assert model.patch_embed1.norm.eps == block.attn.norm.eps == 1e-5
    assert block.mlp.dwconv.dwconv.groups == 256 and block.mlp.dwconv.dwconv.kernel_size == (3, 3)
    assert not hasattr(model.block4[0].attn, "sr")  # ratio 1: full attention
    rates = [b.drop_path for i in range(4) for b in getattr(model, f"block{i + 1}")]
    assert rates == pytest.approx([0.1 * i / 7 for i in range(8)])


def test_mit_b1_feature_shapes_and_stage_norm():
    torch.manual_seed(0)
    model = MiT(**MIT_VARIANTS["B1"]).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 240, 240))
    assert {k: tuple(v.shape[1:]) for k, v in out.items()} == {
        "res2": (64, 60, 60), "res3": (128, 30, 30), "res4": (320, 15, 15), "res5": (512, 8, 8)}
    # Each output is LayerNorm-ed over channels (weight 1, bias 0 at init).
    for v in out.values():
        assert v.mean(1).abs().max() < 1e-4
        assert torch.allclose(v.var(1, unbiased=False), torch.ones(()), atol=1e-3)


def test_odd_input_sizes_round_up_and_too_small_inputs_fail():
    torch.manual_seed(0)
    model = MiT(**MIT_VARIANTS["B0"], drop_path_rate=0.0).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 37, 53))
    assert [tuple(v.shape) for v in out.values()] == [
        (2, 32, 10, 14), (2, 64, 5, 7), (2, 160, 3, 4), (2, 256, 2, 2)]
    with pytest.raises(ValueError, match="spatial-reduction ratio 8"):
        model(torch.randn(1, 3, 28, 64))
    with pytest.raises(ValueError, match="B x 3 x H x W"):
        model(torch.randn(3, 64, 64))


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = MiT(**MIT_VARIANTS["B0"], drop_path_rate=0.0)
    random_proj_loss(model(torch.randn(2, 3, 64, 64))).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_attention_splits_kv_into_keys_then_values():
    # Keys zero -> uniform attention over the reduced map; values the identity -> every
    # output token is the mean of the reduced tokens. Swapping the halves gives zeros.
    torch.manual_seed(0)
    attn = EfficientSelfAttention(8, num_heads=2, sr_ratio=2)
    with torch.no_grad():
        attn.kv.weight.zero_()
        attn.kv.weight[8:] = torch.eye(8)
        attn.kv.bias.zero_()
        attn.proj.weight.copy_(torch.eye(8))
        attn.proj.bias.zero_()
        x = torch.randn(1, 4 * 6, 8)
        out = attn(x, 4, 6)
        reduced = attn.norm(attn.sr(x.transpose(1, 2).reshape(1, 8, 4, 6)).flatten(2).transpose(1, 2))
    assert reduced.shape == (1, 2 * 3, 8)
    assert torch.allclose(out, reduced.mean(1, keepdim=True).expand_as(out), atol=1e-6)


def test_unknown_variant_is_named():
    with pytest.raises(ValueError, match="MODEL.MIT.VARIANT is 'B9'"):
        build_backbone(mit_cfg("B9"))
    with pytest.raises(ValueError, match="OUT_FEATURES"):
        MiT(out_features=("res6",))


# ---- SegFormer head -------------------------------------------------------------------

def test_head_state_dict_matches_official_per_frame_parts(reference_dir):
    official = read_key_list(reference_dir / "tv3s_keys_b1.txt", "decode_head.")
    head = SegFormerHead(b1_shapes(), num_classes=124, embed_dim=256, norm="BN")
    ours = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    per_frame = {k: v for k, v in official.items() if not k.startswith(("vs.", "linear_pred2.", "conv_seg."))}
    assert ours == per_frame
    counts = {name: sum(p.numel() for p in getattr(head, name).parameters())
              for name in ("linear_c4", "linear_c3", "linear_c2", "linear_c1", "linear_fuse", "linear_pred")}
    assert counts == {"linear_c4": 131_328, "linear_c3": 82_176, "linear_c2": 33_024,
                      "linear_c1": 16_640, "linear_fuse": 262_656, "linear_pred": 31_868}


def test_fused_map_concatenates_coarsest_first():
    # Level i projects to the constant i (zero weights, bias i); a fusion conv that copies
    # input channel 0, E, 2E, 3E shows the concat order [c4, c3, c2, c1].
    e = 4
    shapes = {f"res{i + 2}": ShapeSpec(channels=3, stride=4 * 2 ** i) for i in range(4)}
    head = SegFormerHead(shapes, num_classes=2, embed_dim=e, norm="")
    with torch.no_grad():
        for i in range(4):
            proj = getattr(head, f"linear_c{i + 1}").proj
            proj.weight.zero_()
            proj.bias.fill_(i + 1)
        head.linear_fuse.conv.weight.zero_()
        head.linear_fuse.conv.bias.zero_()
        for out_ch in range(4):
            head.linear_fuse.conv.weight[out_ch, out_ch * e] = 1.0
        feats = {f"res{i + 2}": torch.randn(2, 3, 12 // 2 ** i + 1, 16 // 2 ** i) for i in range(4)}
        fused = head.forward_features(feats)
    assert fused.shape == (2, e, 13, 16)
    for channel, level in enumerate([4.0, 3.0, 2.0, 1.0]):
        assert torch.allclose(fused[:, channel], torch.tensor(level))
    assert head.linear_fuse.bn is None and head.linear_fuse.conv.bias is not None


def test_head_forward_contract_loss_and_inference():
    torch.manual_seed(0)
    head = SegFormerHead(b1_shapes(), num_classes=5, embed_dim=16, loss_weight=2.0, ignore_value=255)
    feats = {n: torch.randn(2, s.channels, 32 // s.stride, 48 // s.stride) for n, s in b1_shapes().items()}
    with torch.no_grad():
        head.linear_pred.weight.zero_()
        head.linear_pred.bias.copy_(torch.tensor([3.0, 0, 0, 0, 0]))
    targets = torch.zeros(2, 32, 48, dtype=torch.long)
    targets[:, :, 24:] = 255  # ignored: must not count
    targets[1] = 1
    targets[1, :, 24:] = 255
    head.train()
    result, losses = head(feats, targets)
    assert result is None and set(losses) == {"loss_sem_seg"}
    log_z = math.log(math.exp(3.0) + 4)
    expected = 2.0 * 0.5 * ((log_z - 3.0) + log_z)  # half the valid pixels class 0, half class 1
    assert losses["loss_sem_seg"].item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="needs targets"):
        head(feats)
    head.eval()
    logits, losses = head(feats)
    assert losses == {} and logits.shape == (2, 5, 32, 48)
    assert torch.allclose(logits, torch.tensor([3.0, 0, 0, 0, 0]).view(1, 5, 1, 1).expand_as(logits))


def test_missing_in_feature_is_named():
    with pytest.raises(ValueError, match=r"IN_FEATURES \['res6'\]"):
        build_model(mit_cfg(IN_FEATURES=["res2", "res6"]))


# ---- per-frame SegFormer (detectron2 SemanticSegmentor) ------------------------------

def test_semantic_segmentor_trains_and_returns_full_size_logits():
    torch.manual_seed(0)
    model = build_model(mit_cfg("B0"))
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 255, (2, 3, 32, 40), generator=gen).float()
    # Labels follow the image (brighter right half is class 1), so they can be fitted.
    labels = torch.zeros(2, 32, 40, dtype=torch.long)
    labels[:, :, 20:] = 1
    images[:, :, :, 20:] += 80
    batch = [{"image": images[i], "sem_seg": labels[i], "height": 64, "width": 80} for i in range(2)]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for _ in range(6):
        loss = model(batch)["loss_sem_seg"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(5), abs=0.05)  # near-uniform start
    assert losses[-1] < 0.85 * losses[0]
    model.eval()
    with torch.no_grad():
        out = model([{"image": images[0], "height": 64, "width": 80}])
    # Padded to 32x64 for the backbone, cropped back to 32x40, resized to height x width.
    assert out[0]["sem_seg"].shape == (5, 64, 80)
    pred = out[0]["sem_seg"].argmax(0)
    assert (pred[:, 45:] == 1).float().mean() > 0.9 and (pred[:, :35] == 0).float().mean() > 0.9


def test_synthetic_config_builds_segformer_b0():
    cfg = setup_cfg(str(REPO / "configs" / "synthetic" / "segformer_tiny.yaml"))
    with torch.device("meta"):  # structure only
        model = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)
    assert type(model.backbone) is MiT and type(model.sem_seg_head) is SegFormerHead
    assert model.backbone.patch_embed1.proj.out_channels == 32  # B0
    assert model.backbone.size_divisibility == 32
    assert model.sem_seg_head.num_classes == 8 and model.sem_seg_head.embed_dim == 256
    assert model.sem_seg_head.in_features == ["res2", "res3", "res4", "res5"]

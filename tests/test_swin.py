import pytest
import torch
import torch.nn.functional as F

from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone

from vss import add_vss_config
from vss.modeling.backbone.swin import (
    MASKED_LOGIT,
    D2SwinTransformer,
    PatchMerging,
    SwinBlock,
    WindowAttention,
    relative_position_index,
    shifted_window_mask,
)

from conftest import read_key_list

# Reference variants: (key list, EMBED_DIM, DEPTHS, NUM_HEADS, WINDOW_SIZE, PRETRAIN_IMG_SIZE).
VARIANTS = {
    "t": (96, [2, 2, 6, 2], [3, 6, 12, 24], 7, 224),
    "s": (96, [2, 2, 18, 2], [3, 6, 12, 24], 7, 224),
    "b": (128, [2, 2, 18, 2], [4, 8, 16, 32], 12, 384),
    "l": (192, [2, 2, 18, 2], [6, 12, 24, 48], 12, 384),
}


def swin_cfg(**swin):
    cfg = get_cfg()
    add_vss_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "D2SwinTransformer"
    for key, value in swin.items():
        cfg.MODEL.SWIN[key] = value
    return cfg


def tiny(**swin):
    """A small Swin (res5 of a 64x64 image is smaller than the window, as in real use)."""
    args = dict(EMBED_DIM=16, DEPTHS=[1, 1, 2, 1], NUM_HEADS=[1, 2, 4, 8], DROP_PATH_RATE=0.0)
    args.update(swin)
    torch.manual_seed(0)
    return build_backbone(swin_cfg(**args))


def random_proj_loss(outputs):
    # A plain sum of LayerNorm outputs has zero gradient; project on fixed random weights.
    gen = torch.Generator().manual_seed(1)
    return sum((v * torch.randn(v.shape, generator=gen)).sum() for v in outputs.values())


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_state_dict_matches_upstream_keys(variant, reference_dir):
    embed, depths, heads, window, pretrain = VARIANTS[variant]
    cfg = swin_cfg(EMBED_DIM=embed, DEPTHS=depths, NUM_HEADS=heads, WINDOW_SIZE=window,
                   PRETRAIN_IMG_SIZE=pretrain)
    with torch.device("meta"):  # shapes only: building Swin-L for real takes long
        model = BACKBONE_REGISTRY.get("D2SwinTransformer")(cfg, ShapeSpec(channels=3))
    expected = read_key_list(reference_dir / "mask2former_keys" / f"keys_swin{variant}.txt", "backbone.")
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sorted(got) == sorted(expected)
    assert got == expected
    assert got["layers.0.blocks.0.attn.relative_position_bias_table"] == ((2 * window - 1) ** 2, heads[0])


def test_swin_t_parameter_count():
    with torch.device("meta"):
        model = D2SwinTransformer()
    assert sum(p.numel() for p in model.parameters()) == 27_520_698


def test_relative_position_index_layout(reference_dir):
    fixture = torch.load(reference_dir / "fixtures" / "mask2former_tiny_swin.pt", weights_only=False)
    upstream = fixture["state_dict"]["backbone.layers.0.blocks.0.attn.relative_position_index"]
    assert torch.equal(relative_position_index(7), upstream)
    idx = relative_position_index(3)  # tokens row-major: 0 = (0, 0), 5 = (1, 2), 8 = (2, 2)
    assert idx[0, 8] == 0  # offset (-2, -2)
    assert idx[8, 0] == 24  # offset (+2, +2): (2 + 2) * 5 + (2 + 2)
    assert idx[5, 0] == (1 + 2) * 5 + (2 + 2)
    assert idx.diagonal().eq(12).all()


def test_window_attention_matches_pairwise_formula():
    torch.manual_seed(0)
    attn = WindowAttention(dim=4, window_size=2, num_heads=2)
    x = torch.randn(3, 4, 4)  # 3 windows of 2x2 tokens
    got = attn(x)
    q, k, v = attn.qkv(x).split(4, dim=-1)
    coords = [(0, 0), (0, 1), (1, 0), (1, 1)]
    heads = []
    for h in range(2):
        s = slice(2 * h, 2 * h + 2)
        logits = torch.empty(3, 4, 4)
        for i, (yi, xi) in enumerate(coords):
            for j, (yj, xj) in enumerate(coords):
                bias = attn.relative_position_bias_table[(yi - yj + 1) * 3 + (xi - xj + 1), h]
                logits[:, i, j] = (q[:, i, s] * k[:, j, s]).sum(-1) / 2 ** 0.5 + bias
        heads.append(logits.softmax(-1) @ v[:, :, s])
    want = attn.proj(torch.cat(heads, -1))
    torch.testing.assert_close(got, want)


def test_shifted_window_mask_regions():
    mask = shifted_window_mask(14, 14, window_size=7, shift=3)
    assert mask.shape == (4, 49, 49)
    assert set(mask.unique().tolist()) == {0.0, MASKED_LOGIT}
    allowed = (mask == 0).sum(dim=(1, 2)).tolist()
    # Top-left window is one piece; the edge windows are cut 4 + 3, the corner 4 ways.
    assert allowed == [49 * 49, 28 ** 2 + 21 ** 2, 28 ** 2 + 21 ** 2, 16 ** 2 + 12 ** 2 * 2 + 9 ** 2]
    # Padding counts as map: 10x10 pads to 14x14 and gets the same mask.
    assert torch.equal(shifted_window_mask(10, 10, 7, 3), mask)


def test_patch_merging_order_and_odd_padding():
    merge = PatchMerging(dim=1)
    merge.norm = torch.nn.Identity()  # look at the concatenated 2x2 neighbourhoods directly
    x = torch.arange(1.0, 10.0).view(1, 9, 1)  # a 3x3 map holding 1..9 row-major
    with torch.no_grad():
        merge.reduction.weight.copy_(torch.eye(4)[:2])
        first = merge(x, 3, 3)
        merge.reduction.weight.copy_(torch.eye(4)[2:])
        second = merge(x, 3, 3)
    # Channels: (even row, even col), (odd, even), (even, odd), (odd, odd); padding is 0.
    assert first[0].tolist() == [[1, 4], [3, 6], [7, 0], [9, 0]]
    assert second[0].tolist() == [[2, 5], [0, 0], [8, 0], [0, 0]]


def _block_run(block, x, mask):
    with torch.no_grad():
        return block(x.flatten(1, 2), 14, 14, mask).view(x.shape)


def test_unshifted_windows_do_not_interact():
    torch.manual_seed(0)
    block = SwinBlock(dim=8, num_heads=2, window_size=7, shift=0).eval()
    x = torch.randn(1, 14, 14, 8)
    changed = x.clone()
    changed[:, 7:, 7:] += torch.randn(1, 7, 7, 8)  # only the bottom-right window
    a, b = _block_run(block, x, None), _block_run(block, changed, None)
    assert torch.equal(a[:, :7], b[:, :7]) and torch.equal(a[:, :, :7], b[:, :, :7])
    assert not torch.allclose(a[:, 7:, 7:], b[:, 7:, 7:])


def test_shifted_window_mask_blocks_wrapped_regions():
    torch.manual_seed(0)
    block = SwinBlock(dim=8, num_heads=2, window_size=7, shift=3).eval()
    mask = shifted_window_mask(14, 14, 7, 3)
    x = torch.randn(1, 14, 14, 8)
    far = x.clone()
    far[:, 13, 13] = torch.randn(8)  # lands in the same shifted window as (0, 0), another piece
    near = x.clone()
    near[:, 2, 2] = torch.randn(8)  # same piece as (0, 0)
    base = _block_run(block, x, mask)
    assert torch.equal(base[:, 0, 0], _block_run(block, far, mask)[:, 0, 0])
    assert not torch.allclose(base[:, 0, 0], _block_run(block, near, mask)[:, 0, 0])
    # Without the mask the wrapped token would leak in: the check above is meaningful.
    no_mask = torch.zeros_like(mask)
    assert not torch.allclose(_block_run(block, x, no_mask)[:, 0, 0],
                              _block_run(block, far, no_mask)[:, 0, 0])


def test_output_shapes_strides_and_padding_for_odd_sizes():
    model = tiny().eval()
    assert model.size_divisibility == 32
    shapes = model.output_shape()
    assert {k: (s.channels, s.stride) for k, s in shapes.items()} == {
        "res2": (16, 4), "res3": (32, 8), "res4": (64, 16), "res5": (128, 32)
    }
    x = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        out = model(x)
        # The patch embedding zero-pads to whole patches: same result as padding first.
        padded = model(F.pad(x, (0, 1, 0, 3)))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "res2": (1, 16, 25, 33), "res3": (1, 32, 13, 17), "res4": (1, 64, 7, 9), "res5": (1, 128, 4, 5)
    }
    for name, value in out.items():
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, padded[name], rtol=0, atol=1e-6)
    # Each output is LayerNorm-ed per position (weight 1, bias 0 at init).
    torch.testing.assert_close(out["res3"].mean(1), torch.zeros(1, 13, 17), rtol=0, atol=1e-5)


def test_out_features_subset():
    model = tiny(OUT_FEATURES=["res3", "res5"]).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert sorted(out) == ["res3", "res5"] and sorted(model.output_shape()) == ["res3", "res5"]
    assert out["res5"].shape == (2, 128, 2, 2)
    assert "norm0.weight" in model.state_dict()  # upstream keeps every stage norm


def test_gradients_reach_all_parameters():
    model = tiny(APE=True, PRETRAIN_IMG_SIZE=64)
    random_proj_loss(model(torch.randn(2, 3, 64, 64))).backward()
    names = [n for n, _ in model.named_parameters()]
    assert "absolute_pos_embed" in names
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_checkpointing_gives_same_outputs_and_gradients():
    x = torch.randn(1, 3, 64, 64)
    plain, ckpt = tiny(), tiny(USE_CHECKPOINT=True)
    ckpt.load_state_dict(plain.state_dict())
    random_proj_loss(plain(x)).backward()
    random_proj_loss(ckpt(x)).backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_stochastic_depth_schedule_and_eval_determinism():
    model = tiny(DROP_PATH_RATE=0.3, DEPTHS=[2, 2, 2, 2])
    rates = [b.drop_path for stage in model.layers for b in stage.blocks]
    assert rates == pytest.approx([0.3 * i / 7 for i in range(8)])
    shifts = [b.shift for stage in model.layers for b in stage.blocks]
    assert shifts == [0, 3] * 4
    x = torch.randn(4, 3, 64, 64)
    torch.manual_seed(1)
    train_a = model(x)["res5"]
    train_b = model(x)["res5"]
    assert not torch.allclose(train_a, train_b)  # blocks dropped at random while training
    model.eval()
    with torch.no_grad():
        a, b = model(x), model(x)
    for name in a:
        assert torch.equal(a[name], b[name])


def test_config_options_change_structure():
    model = tiny(QKV_BIAS=False, PATCH_NORM=False, QK_SCALE=0.25, MLP_RATIO=2.0, WINDOW_SIZE=5,
                 APE=True, PRETRAIN_IMG_SIZE=96)
    sd = model.state_dict()
    assert "layers.0.blocks.0.attn.qkv.bias" not in sd
    assert not any(k.startswith("patch_embed.norm") for k in sd)
    assert sd["layers.0.blocks.0.mlp.fc1.weight"].shape == (32, 16)
    assert sd["layers.0.blocks.0.attn.relative_position_bias_table"].shape == (81, 1)
    assert sd["absolute_pos_embed"].shape == (1, 16, 24, 24)
    assert model.layers[2].blocks[0].attn.scale == 0.25
    assert tiny().layers[2].blocks[0].attn.scale == 16 ** -0.5  # 64 channels / 4 heads
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 50, 70))["res5"].shape == (1, 128, 2, 3)


def test_bad_configs_and_inputs_raise():
    with pytest.raises(ValueError, match="NUM_HEADS"):
        tiny(NUM_HEADS=[1, 2, 4])
    with pytest.raises(ValueError, match="not divisible"):
        tiny(NUM_HEADS=[3, 2, 4, 8])
    with pytest.raises(ValueError, match="res6"):
        tiny(OUT_FEATURES=["res6"])
    with pytest.raises(ValueError, match="B x 3 x H x W"):
        tiny()(torch.randn(3, 32, 32))


def test_fixture_backbone_weights_load(reference_dir):
    fixtures = reference_dir / "fixtures"
    cfg = swin_cfg()
    cfg.merge_from_file(str(fixtures / "mask2former_tiny_swin_config.yaml"))
    model = build_backbone(cfg).eval()
    state = torch.load(fixtures / "mask2former_tiny_swin.pt", weights_only=False)["state_dict"]
    backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in backbone.items()}
    result = model.load_state_dict(backbone, strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    torch.testing.assert_close(model.norm3.weight, backbone["norm3.weight"], rtol=0, atol=0)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 96, 128))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "res2": (1, 32, 24, 32), "res3": (1, 64, 12, 16), "res4": (1, 128, 6, 8), "res5": (1, 256, 3, 4)
    }
    assert all(v.isfinite().all() for v in out.values())


def test_half_precision_forward():
    model = tiny().to(torch.bfloat16).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64, dtype=torch.bfloat16))
    assert out["res4"].dtype == torch.bfloat16 and out["res4"].shape == (1, 64, 4, 4)

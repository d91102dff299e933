"""Mask2Former pixel decoder: sine positions, deformable attention, encoder, FPN, config and weights."""
import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from vss.config import add_vss_config
from vss.modeling.mask2former.ms_deform_attn import MSDeformAttn
from vss.modeling.mask2former.pixel_decoder import (
    MSDeformAttnEncoder,
    MSDeformAttnEncoderLayer,
    MSDeformAttnPixelDecoder,
    MSDeformAttnTransformer,
)
from vss.modeling.mask2former.position_encoding import PositionEmbeddingSine
from conftest import read_key_list

PREFIX = "sem_seg_head.pixel_decoder."
STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}


def input_shapes(channels):
    return {name: ShapeSpec(channels=c, stride=STRIDES[name]) for name, c in zip(STRIDES, channels)}


def small_decoder(channels=(16, 24, 40, 48), conv_dim=32, enc_layers=1, nheads=2, dropout=0.0):
    return MSDeformAttnPixelDecoder(
        input_shapes(channels),
        transformer_dropout=dropout,
        transformer_nheads=nheads,
        transformer_dim_feedforward=64,
        transformer_enc_layers=enc_layers,
        conv_dim=conv_dim,
        mask_dim=24,
        norm="GN",
        transformer_in_features=["res3", "res4", "res5"],
        common_stride=4,
    )


def features_for(shapes, height, width, batch=1, seed=0):
    """Backbone-like features of a height x width image (sizes rounded up per stride)."""
    g = torch.Generator().manual_seed(seed)
    return {
        name: torch.randn(batch, s.channels, math.ceil(height / s.stride), math.ceil(width / s.stride), generator=g)
        for name, s in shapes.items()
    }


# ---------------------------------------------------------------- position encoding


@pytest.mark.parametrize("normalize", [False, True])
def test_sine_positions_match_formula(normalize):
    num_feats, h, w = 6, 3, 5
    pos = PositionEmbeddingSine(num_feats, temperature=100, normalize=normalize)(torch.zeros(2, 7, h, w))
    assert pos.shape == (2, 2 * num_feats, h, w)
    for i in range(h):
        for j in range(w):
            y, x = float(i + 1), float(j + 1)
            if normalize:
                y, x = y / (h + 1e-6) * 2 * math.pi, x / (w + 1e-6) * 2 * math.pi
            for k in range(num_feats):
                freq = 100 ** (2 * (k // 2) / num_feats)
                trig = math.sin if k % 2 == 0 else math.cos
                assert pos[1, k, i, j].item() == pytest.approx(trig(y / freq), abs=1e-5)
                assert pos[1, num_feats + k, i, j].item() == pytest.approx(trig(x / freq), abs=1e-5)


def test_sine_positions_skip_padding():
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[:, 2:, :] = True  # bottom padding
    pe = PositionEmbeddingSine(4, normalize=True)
    pos = pe(torch.zeros(1, 1, 4, 4), mask)
    # the last content row sits at 2*pi, as the last row of an unpadded 2-row map does
    unpadded = pe(torch.zeros(1, 1, 2, 4))
    torch.testing.assert_close(pos[:, :, :2], unpadded)


def test_sine_positions_reject_odd_width():
    with pytest.raises(ValueError, match="even"):
        PositionEmbeddingSine(5)


# ---------------------------------------------------------------- deformable attention


def slow_ms_deform_attn(attn, query, reference_points, inputs, shapes, padding_mask=None):
    """Direct float64 evaluation: explicit bilinear weights and index math, one sample at a time.

    Returns the output and how many bilinear corners fell outside their map.
    """
    d = lambda t: t.detach().double()  # noqa: E731
    heads, levels, points = attn.n_heads, attn.n_levels, attn.n_points
    head_dim = attn.d_model // heads
    query, reference_points, inputs = d(query), d(reference_points), d(inputs)
    value = inputs @ d(attn.value_proj.weight).T + d(attn.value_proj.bias)
    if padding_mask is not None:
        value = value * (~padding_mask)[..., None]
    offsets = query @ d(attn.sampling_offsets.weight).T + d(attn.sampling_offsets.bias)
    logits = query @ d(attn.attention_weights.weight).T + d(attn.attention_weights.bias)
    batch, len_q, _ = query.shape
    offsets = offsets.view(batch, len_q, heads, levels, points, 2)
    logits = logits.view(batch, len_q, heads, levels * points)
    weights = (logits.exp() / logits.exp().sum(-1, keepdim=True)).view(batch, len_q, heads, levels, points)
    starts = [0]
    for h, w in shapes[:-1]:
        starts.append(starts[-1] + h * w)

    out = torch.zeros(batch, len_q, attn.d_model, dtype=torch.float64)
    outside = 0
    for b in range(batch):
        for q in range(len_q):
            for m in range(heads):
                channels = slice(m * head_dim, (m + 1) * head_dim)
                for lvl, (h, w) in enumerate(shapes):
                    for p in range(points):
                        x = reference_points[b, q, lvl, 0].item() + offsets[b, q, m, lvl, p, 0].item() / w
                        y = reference_points[b, q, lvl, 1].item() + offsets[b, q, m, lvl, p, 1].item() / h
                        px, py = x * w - 0.5, y * h - 0.5  # pixel (i, j) has its centre at (j+0.5)/w, (i+0.5)/h
                        x0, y0 = math.floor(px), math.floor(py)
                        fx, fy = px - x0, py - y0
                        sample = torch.zeros(head_dim, dtype=torch.float64)
                        for yy, wy in ((y0, 1 - fy), (y0 + 1, fy)):
                            for xx, wx in ((x0, 1 - fx), (x0 + 1, fx)):
                                if 0 <= yy < h and 0 <= xx < w:
                                    sample += wy * wx * value[b, starts[lvl] + yy * w + xx, channels]
                                else:
                                    outside += 1
                        out[b, q, channels] += weights[b, q, m, lvl, p] * sample
    out = out @ d(attn.output_proj.weight).T + d(attn.output_proj.bias)
    return out, outside


@pytest.mark.parametrize("with_padding", [False, True])
def test_ms_deform_attn_matches_direct_bilinear_sampling(with_padding):
    torch.manual_seed(0)
    shapes = [(4, 5), (2, 3), (1, 2)]
    attn = MSDeformAttn(d_model=8, n_levels=3, n_heads=2, n_points=2)
    with torch.no_grad():  # offsets of a few pixels in every direction, non-uniform weights
        attn.sampling_offsets.weight.normal_(0, 1.0)
        attn.attention_weights.weight.normal_(0, 1.0)
        attn.attention_weights.bias.normal_(0, 1.0)
    len_in = sum(h * w for h, w in shapes)
    query = torch.randn(2, 6, 8)
    inputs = torch.randn(2, len_in, 8)
    reference_points = torch.rand(2, 6, 3, 2)
    spatial_shapes = torch.tensor(shapes)
    start_index = torch.tensor([0, 20, 26])
    padding_mask = torch.rand(2, len_in) < 0.3 if with_padding else None

    out = attn(query, reference_points, inputs, spatial_shapes, start_index, padding_mask)
    expected, outside = slow_ms_deform_attn(attn, query, reference_points, inputs, shapes, padding_mask)

    assert out.shape == (2, 6, 8)
    assert outside > 0  # the zero-padding border was exercised
    assert (out.double() - expected).abs().max().item() < 1e-5


def test_ms_deform_attn_reads_the_pixel_an_offset_points_to():
    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=4, n_levels=1, n_heads=1, n_points=1)
    h, w = 3, 4
    with torch.no_grad():
        attn.sampling_offsets.weight.zero_()
        attn.sampling_offsets.bias.copy_(torch.tensor([2.0, 1.0]))  # 2 pixels right, 1 down
    inputs = torch.randn(1, h * w, 4)
    query = torch.randn(1, 1, 4)
    reference = torch.tensor([[[[0.5 / w, 0.5 / h]]]])  # centre of pixel (row 0, col 0)
    out = attn(query, reference, inputs, torch.tensor([[h, w]]), torch.tensor([0]))
    target = inputs[:, 1 * w + 2]  # pixel (row 1, col 2)
    expected = attn.output_proj(attn.value_proj(target))
    torch.testing.assert_close(out[:, 0], expected, rtol=0, atol=1e-6)


def test_ms_deform_attn_initial_offsets_fan_out_by_head_and_point():
    attn = MSDeformAttn(d_model=16, n_levels=2, n_heads=8, n_points=3)
    bias = attn.sampling_offsets.bias.view(8, 2, 3, 2)
    for point in range(3):
        for level in range(2):
            # head h looks along angle 2*pi*h/8, stretched to the unit square's border, point p at p+1
            torch.testing.assert_close(bias[0, level, point], torch.tensor([1.0, 0.0]) * (point + 1))
            torch.testing.assert_close(bias[1, level, point], torch.tensor([1.0, 1.0]) * (point + 1))
            torch.testing.assert_close(bias[2, level, point], torch.tensor([0.0, 1.0]) * (point + 1), atol=1e-6, rtol=0)
            torch.testing.assert_close(bias[4, level, point], torch.tensor([-1.0, 0.0]) * (point + 1), atol=1e-6, rtol=0)
    assert attn.sampling_offsets.weight.abs().sum() == 0
    assert attn.attention_weights.weight.abs().sum() == 0 and attn.attention_weights.bias.abs().sum() == 0
    assert attn.value_proj.bias.abs().sum() == 0 and attn.output_proj.bias.abs().sum() == 0


def test_ms_deform_attn_rejects_bad_sizes():
    with pytest.raises(ValueError, match="divisible"):
        MSDeformAttn(d_model=10, n_heads=4)
    attn = MSDeformAttn(d_model=8, n_levels=1, n_heads=2, n_points=1)
    with pytest.raises(ValueError, match="11 positions"):
        attn(torch.randn(1, 2, 8), torch.rand(1, 2, 1, 2), torch.randn(1, 11, 8), torch.tensor([[3, 4]]), torch.tensor([0]))


# ---------------------------------------------------------------- encoder


def test_reference_points_are_pixel_centres_scaled_by_valid_ratios():
    shapes = torch.tensor([[2, 3], [1, 2]])
    full = MSDeformAttnEncoder.reference_points(shapes, torch.ones(1, 2, 2), "cpu")
    assert full.shape == (1, 6 + 2, 2, 2)
    xs = full[0, :6, 0, 0].view(2, 3)
    ys = full[0, :6, 0, 1].view(2, 3)
    torch.testing.assert_close(xs, torch.tensor([[1 / 6, 3 / 6, 5 / 6]] * 2))
    torch.testing.assert_close(ys, torch.tensor([[1 / 4] * 3, [3 / 4] * 3]))
    torch.testing.assert_close(full[0, 6:, 1, 0], torch.tensor([0.25, 0.75]))
    # content covering the left half in x: centres spread over the content of each level
    ratios = torch.tensor([[[0.5, 1.0], [0.25, 1.0]]])
    padded = MSDeformAttnEncoder.reference_points(shapes, ratios, "cpu")
    torch.testing.assert_close(padded[0, :3, 0, 0], torch.tensor([1 / 6, 3 / 6, 5 / 6]) * 0.5 / 0.5)
    torch.testing.assert_close(padded[0, :3, 1, 0], torch.tensor([1 / 6, 3 / 6, 5 / 6]) * 0.25 / 0.5)


def test_encoder_layer_is_post_norm_with_positions_in_queries_only():
    torch.manual_seed(0)
    layer = MSDeformAttnEncoderLayer(d_model=8, d_ffn=16, dropout=0.0, n_levels=1, n_heads=2, n_points=2)
    with torch.no_grad():
        layer.self_attn.sampling_offsets.weight.normal_()
        layer.self_attn.attention_weights.weight.normal_()
    shapes, start = torch.tensor([[3, 4]]), torch.tensor([0])
    src, pos = torch.randn(2, 12, 8), torch.randn(2, 12, 8)
    ref = MSDeformAttnEncoder.reference_points(shapes, torch.ones(2, 1, 2), "cpu")
    out = layer(src, pos, ref, shapes, start)

    hidden = F.layer_norm(src + layer.self_attn(src + pos, ref, src, shapes, start), (8,))
    ffn = layer.linear2(F.relu(layer.linear1(hidden)))
    torch.testing.assert_close(out, F.layer_norm(hidden + ffn, (8,)))


def test_encoder_layer_dropout_acts_only_in_training():
    torch.manual_seed(0)
    layer = MSDeformAttnEncoderLayer(d_model=8, d_ffn=16, dropout=0.5, n_levels=1, n_heads=2, n_points=1)
    shapes, start = torch.tensor([[2, 2]]), torch.tensor([0])
    src, pos = torch.randn(1, 4, 8), torch.randn(1, 4, 8)
    ref = MSDeformAttnEncoder.reference_points(shapes, torch.ones(1, 1, 2), "cpu")
    layer.eval()
    first = layer(src, pos, ref, shapes, start)
    torch.testing.assert_close(first, layer(src, pos, ref, shapes, start))
    layer.train()
    assert not torch.allclose(first, layer(src, pos, ref, shapes, start))


def test_transformer_adds_level_embedding_to_positions():
    torch.manual_seed(0)
    tr = MSDeformAttnTransformer(d_model=8, nhead=2, num_encoder_layers=2, dim_feedforward=16, dropout=0.0,
                                 num_feature_levels=2, enc_n_points=2)
    with torch.no_grad():
        for layer in tr.encoder.layers:
            layer.self_attn.sampling_offsets.weight.normal_()
            layer.self_attn.attention_weights.weight.normal_()
    srcs = [torch.randn(1, 8, 2, 3), torch.randn(1, 8, 4, 6)]
    pos = [torch.randn(1, 8, 2, 3), torch.randn(1, 8, 4, 6)]
    memory, shapes, start = tr(srcs, pos)
    assert memory.shape == (1, 6 + 24, 8)
    assert shapes.tolist() == [[2, 3], [4, 6]] and start.tolist() == [0, 6]

    shift = torch.randn(8)
    with torch.no_grad():
        tr.level_embed[1] += shift
    shifted, _, _ = tr(srcs, pos)
    assert (shifted - memory).abs().max() > 1e-3  # the level embedding matters
    moved, _, _ = tr(srcs, [pos[0], pos[1] - shift.view(1, 8, 1, 1)])
    torch.testing.assert_close(moved, memory)  # ... exactly as a shift of that level's positions


def test_transformer_padding_content_does_not_leak():
    torch.manual_seed(0)
    tr = MSDeformAttnTransformer(d_model=8, nhead=2, num_encoder_layers=2, dim_feedforward=16, dropout=0.0,
                                 num_feature_levels=2, enc_n_points=3)
    with torch.no_grad():
        for layer in tr.encoder.layers:
            layer.self_attn.sampling_offsets.weight.normal_(0, 2.0)
    srcs = [torch.randn(1, 8, 2, 4), torch.randn(1, 8, 4, 8)]
    pos = [torch.randn(1, 8, 2, 4), torch.randn(1, 8, 4, 8)]
    masks = [torch.zeros(1, 2, 4, dtype=torch.bool), torch.zeros(1, 4, 8, dtype=torch.bool)]
    masks[0][..., 3:] = True
    masks[1][..., 6:] = True
    out, _, _ = tr(srcs, pos, masks)
    noisy = [s.clone() for s in srcs]
    noisy[0][..., 3:] = 100.0
    noisy[1][..., 6:] = -100.0
    out_noisy, _, _ = tr(noisy, pos, masks)
    content = torch.cat([(~m).flatten(1) for m in masks], 1)[0]
    torch.testing.assert_close(out_noisy[0, content], out[0, content])
    assert (out_noisy[0, ~content] - out[0, ~content]).abs().max() > 1e-3


# ---------------------------------------------------------------- pixel decoder


@pytest.mark.parametrize("height,width", [(70, 90), (33, 47), (64, 96)])
def test_output_shapes_for_odd_sizes(height, width):
    decoder = small_decoder().eval()
    feats = features_for(input_shapes((16, 24, 40, 48)), height, width, batch=2)
    with torch.no_grad():
        mask_features, encoder_out, multi_scale = decoder.forward_features(feats)
    size = lambda name: tuple(feats[name].shape[-2:])  # noqa: E731
    assert mask_features.shape == (2, 24) + size("res2")
    assert encoder_out.shape == (2, 32) + size("res5")
    assert [tuple(x.shape) for x in multi_scale] == [(2, 32) + size(n) for n in ("res5", "res4", "res3")]
    assert encoder_out is multi_scale[0]
    assert torch.isfinite(mask_features).all()


def test_levels_flow_coarse_to_fine_through_the_fpn():
    # with no encoder layer the encoder is the identity, exposing the projection and FPN wiring
    torch.manual_seed(0)
    decoder = small_decoder(enc_layers=0).eval()
    feats = features_for(input_shapes((16, 24, 40, 48)), 50, 70)
    with torch.no_grad():
        mask_features, encoder_out, multi_scale = decoder.forward_features(feats)
        torch.testing.assert_close(encoder_out, decoder.input_proj[0](feats["res5"]))
        torch.testing.assert_close(multi_scale[1], decoder.input_proj[1](feats["res4"]))
        torch.testing.assert_close(multi_scale[2], decoder.input_proj[2](feats["res3"]))
        lateral = decoder.adapter_1(feats["res2"])
        up = F.interpolate(multi_scale[2], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
        torch.testing.assert_close(mask_features, decoder.mask_features(decoder.layer_1(lateral + up)))
    assert decoder.input_proj[0][0].in_channels == 48 and decoder.input_proj[2][0].in_channels == 24


def test_forward_runs_in_float32_under_autocast():
    decoder = small_decoder().eval()
    feats = {k: v.bfloat16() for k, v in features_for(input_shapes((16, 24, 40, 48)), 64, 64).items()}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        mask_features, encoder_out, multi_scale = decoder.forward_features(feats)
    assert mask_features.dtype == encoder_out.dtype == multi_scale[2].dtype == torch.float32


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    decoder = small_decoder(enc_layers=2).train()
    with torch.no_grad():  # at init the queries steer nothing (zero weights), so nothing reaches level_embed
        for layer in decoder.transformer.encoder.layers:
            layer.self_attn.sampling_offsets.weight.normal_(0, 0.1)
            layer.self_attn.attention_weights.weight.normal_(0, 0.1)
    feats = features_for(input_shapes((16, 24, 40, 48)), 40, 56, batch=2)
    mask_features, _, multi_scale = decoder.forward_features(feats)
    # random weights: plain sums are blind to LayerNorm/GroupNorm gains
    loss = (mask_features * torch.randn_like(mask_features)).sum()
    loss = loss + sum((x * torch.randn_like(x)).sum() for x in multi_scale)
    loss.backward()
    for name, p in decoder.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_rejects_inconsistent_inputs():
    with pytest.raises(ValueError, match="res6"):
        MSDeformAttnPixelDecoder(
            input_shapes((16, 24, 40, 48)), transformer_dropout=0.0, transformer_nheads=2,
            transformer_dim_feedforward=16, transformer_enc_layers=1, conv_dim=32, mask_dim=32, norm="GN",
            transformer_in_features=["res5", "res6"], common_stride=4,
        )
    with pytest.raises(ValueError, match="divisible by 32"):
        small_decoder(conv_dim=48)


# ---------------------------------------------------------------- upstream names, shapes and weights




def vspw_cfg():
    cfg = get_cfg()
    add_vss_config(cfg)
    cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME = "MSDeformAttnPixelDecoder"
    cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 256
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 256
    cfg.MODEL.SEM_SEG_HEAD.NORM = "GN"
    cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = 6
    cfg.MODEL.SEM_SEG_HEAD.COMMON_STRIDE = 4
    return cfg


@pytest.mark.parametrize(
    "key_file,channels",
    [
        ("keys_r50.txt", (256, 512, 1024, 2048)),
        ("keys_r101.txt", (256, 512, 1024, 2048)),
        ("keys_swint.txt", (96, 192, 384, 768)),
        ("keys_swinb.txt", (128, 256, 512, 1024)),
        ("keys_swinl.txt", (192, 384, 768, 1536)),
    ],
)
def test_names_and_shapes_match_upstream(key_file, channels, reference_dir):
    cfg = vspw_cfg()
    decoder = SEM_SEG_HEADS_REGISTRY.get(cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME)(cfg, input_shapes(channels))
    ours = {name: tuple(t.shape) for name, t in decoder.state_dict().items()}
    assert ours == read_key_list(reference_dir / "mask2former_keys" / key_file, PREFIX)


def test_fixture_weights_load_and_config_builds_their_shapes(reference_dir):
    fixture = torch.load(reference_dir / "fixtures" / "mask2former_tiny_swin.pt", weights_only=False)
    weights = {k[len(PREFIX):]: v for k, v in fixture["state_dict"].items() if k.startswith(PREFIX)}
    cfg = get_cfg()
    add_vss_config(cfg)
    cfg.merge_from_file(str(reference_dir / "fixtures" / "mask2former_tiny_swin_config.yaml"))
    # the encoder takes its 4 heads from MASK_FORMER.NHEADS, not DEFORMABLE_..._N_HEADS (8)
    assert cfg.MODEL.MASK_FORMER.NHEADS == 4
    decoder = MSDeformAttnPixelDecoder(cfg, input_shapes((32, 64, 128, 256)))
    result = decoder.load_state_dict(weights, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert decoder.transformer.encoder.layers[0].self_attn.n_heads == 4
    torch.testing.assert_close(decoder.transformer.level_embed, weights["transformer.level_embed"])

    decoder.eval()
    with torch.no_grad():
        mask_features, _, multi_scale = decoder.forward_features(features_for(input_shapes((32, 64, 128, 256)), 96, 128))
    assert mask_features.shape == (1, 64, 24, 32)
    assert [tuple(x.shape[-2:]) for x in multi_scale] == [(3, 4), (6, 8), (12, 16)]

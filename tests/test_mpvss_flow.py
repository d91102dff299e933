"""MPVSS flow module: official keys and sizes, input preparation, flow head, variants."""
import math

import pytest
import torch
from detectron2.config import get_cfg

from vss import add_vss_config
from vss.modeling.mpvss import FLOW_TYPES, FlowEstimator, MotionDecoder, MotionEncoder
from vss.modeling.mpvss.motion_decoder import crop_like
from vss.modeling.mpvss.motion_encoder import ConvBlock
from conftest import read_key_list

# OFFICIAL_CODE_FACTS 1.2
SUBMODULE_PARAMS = {
    "encoder": 24_050_752,
    "encoder.conv1": 18_880,
    "encoder.conv2": 204_928,
    "encoder.conv3": 1_409_536,
    "encoder.conv4": 3_539_968,
    "encoder.conv5": 4_719_616,
    "encoder.conv6": 14_157_824,
    "decoder": 16_034_394,
    "decoder.transformer_self_attention_layers": 2_373_120,
    "decoder.transformer_ffn_layers": 9_462_528,
    "decoder.input_proj": 525_056,
    "decoder.level_embed": 768,
    "decoder.query_embed": 25_600,
    "decoder.decoder_norm": 512,
    "decoder.output_head": 525_568,
    "decoder.scale_layer": 591_360,
    "decoder.deconv5": 524_288,
    "decoder.deconv4": 790_528,
    "decoder.deconv3": 790_528,
    "decoder.deconv2": 395_264,
    "decoder.predict_flow6": 4_608,
    "decoder.predict_flow5": 6_948,
    "decoder.predict_flow4": 6_948,
    "decoder.predict_flow3": 6_948,
    "decoder.upsample_flow5": 64,
    "decoder.upsample_flow4": 64,
    "decoder.upsample_flow3": 64,
    "decoder.upsample_flow2": 64,
    "decoder.predict_flow": 3_492,
    "decoder.fuse_layer": 74,
}

# Default-config totals per variant; the paper's Table 3b lists 40.08 / 38.68 / 37.56 /
# 37.56 / 40.08 M (query_for_pf: ours omits the query head it does not use).
VARIANT_PARAMS = {
    "query": 40_085_146,
    "pixel": 38_675_536,
    "query_learned": 37_555_302,
    "query_random": 37_555_302,
    "query_for_pf": 38_967_632,
}

NUM_QUERIES = 5
HIDDEN = 32


def default_cfg(flow_type="query"):
    cfg = get_cfg()
    add_vss_config(cfg)
    cfg.MODEL.MOTION.FLOW_TYPE = flow_type
    return cfg


def build_default(flow_type="query"):
    # parameter bookkeeping only: no memory or init time needed
    with torch.device("meta"):
        return FlowEstimator(default_cfg(flow_type))


def small(flow_type="query", **kwargs):
    torch.manual_seed(0)
    args = dict(flow_type=flow_type, num_queries=NUM_QUERIES, hidden_dim=HIDDEN, nheads=2,
                dim_feedforward=64, decoder_layers=3, encoder_channels=(8, 8, 16, 16, 16, 32))
    args.update(kwargs)
    return FlowEstimator(**args)


def randomize_fusion(model):
    """The fusion conv starts at weight 0 (output 1 whatever the input): make it see its input."""
    torch.nn.init.normal_(model.decoder.fuse_layer.conv.weight)


def frames(batch=1, height=64, width=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    image, key = torch.rand(2, batch, 3, height, width, generator=g) * 255
    return image, key


def queries(batch=1, seed=2):
    return torch.randn(batch, NUM_QUERIES, HIDDEN, generator=torch.Generator().manual_seed(seed))


def numel(module):
    return sum(p.numel() for p in module.parameters())


def test_state_dict_is_official(reference_dir):
    expected = list(read_key_list(reference_dir / "mpvss_flow_keys.txt").items())
    model = build_default()
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == expected
    assert len(expected) == 165
    buffers = dict(model.named_buffers())
    assert buffers["flow_img_norm_mean"].shape == buffers["flow_img_norm_std"].shape == (6, 1, 1)
    assert not any("norm_mean" in k or "norm_std" in k for k in model.state_dict())


def test_parameter_counts():
    model = build_default()
    modules = dict(model.named_modules())
    assert {name: numel(modules[name]) for name in SUBMODULE_PARAMS} == SUBMODULE_PARAMS
    assert numel(model) == 40_085_146


@pytest.mark.parametrize("flow_type", FLOW_TYPES)
def test_variant_parameter_counts(flow_type):
    model = build_default(flow_type)
    assert numel(model) == VARIANT_PARAMS[flow_type]
    names = {n.split(".")[1] for n, _ in model.named_parameters() if n.startswith("decoder.")}
    assert ("deconv5" in names) == (flow_type in ("query", "pixel", "query_for_pf"))
    assert ("output_head" in names) == (flow_type in ("query", "query_learned", "query_random"))
    assert ("transformer_ffn_layers" in names) == (flow_type != "pixel")
    if flow_type == "pixel":  # a plain FlowNetS decoder on the raw encoder levels
        assert model.decoder.deconv5.conv.weight.shape == (1024, 512, 4, 4)
        assert model.decoder.predict_flow.conv.weight.shape == (2, 194, 3, 3)
    if flow_type in ("query_learned", "query_random"):
        assert model.decoder.fuse_layer.conv.weight.shape == (2, 2, 3, 3)


def test_config_checks_query_count_and_width():
    cfg = default_cfg()
    cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES = 50
    with pytest.raises(ValueError, match="NUM_OBJECT_QUERIES"):
        FlowEstimator(cfg)
    cfg = default_cfg()
    cfg.MODEL.MOTION.HIDDEN_DIM = 128
    with pytest.raises(ValueError, match="MASK_FORMER.HIDDEN_DIM"):
        FlowEstimator(cfg)
    cfg.MODEL.MOTION.FLOW_TYPE = "pixel"  # reads no key queries: any width
    with torch.device("meta"):
        FlowEstimator(cfg)
    with pytest.raises(ValueError, match="FLOW_TYPE"):
        FlowEstimator(flow_type="optical")


def test_forward_rejects_wrong_query_count():
    model = small()
    image, key = frames()
    with pytest.raises(ValueError, match="NUM_QUERIES"):
        model(image, key, torch.randn(1, NUM_QUERIES + 1, HIDDEN), [(64, 64)])
    with pytest.raises(ValueError, match="NUM_QUERIES"):
        model(image, key, None, [(64, 64)])


def test_encoder_levels_round_up():
    encoder = MotionEncoder(6, (4, 4, 4, 4, 4, 4))
    outs = encoder(torch.zeros(1, 6, 128, 176))  # a 250x330 frame, padded to 256x352, halved
    assert [tuple(o.shape[-2:]) for o in outs] == [(32, 44), (16, 22), (8, 11), (4, 6), (2, 3)]
    assert [len(getattr(encoder, f"conv{i}")) for i in range(1, 7)] == [1, 1, 2, 2, 2, 2]
    # conv3's second conv is 3x3 although the block's kernel is 5
    assert MotionEncoder().conv3[1].conv.kernel_size == (3, 3)


def test_conv_init_is_kaiming_fan_out():
    torch.manual_seed(0)
    block = ConvBlock(64, 128, 3)
    expected = math.sqrt(2 / (1 + 0.1**2)) / math.sqrt(128 * 9)
    assert block.conv.weight.std().item() == pytest.approx(expected, rel=0.03)
    assert torch.all(block.conv.bias == 0)
    out = block(torch.full((1, 64, 3, 3), -1.0))  # LeakyReLU(0.1) on negative outputs
    assert out.min() < 0


@pytest.mark.parametrize("size,grid", [((256, 320), (32, 40)), ((250, 330), (32, 44))])
def test_flow_shape_is_one_eighth_of_padded_frame(size, grid):
    model = small().eval()
    image, key = frames(2, *size)
    with torch.no_grad():
        flow = model(image, key, queries(2), [size, (size[0] - 10, size[1] - 20)])
    assert flow.shape == (2, NUM_QUERIES, 2, *grid)


@pytest.mark.parametrize("flow_type", ["query", "query_learned", "query_random"])
def test_fresh_module_outputs_unit_flow(flow_type):
    model = small(flow_type).eval()
    image, key = frames()
    with torch.no_grad():
        flow = model(image, key, queries(), [(64, 64)])
    assert torch.equal(flow, torch.ones_like(flow))


@pytest.mark.parametrize("flow_type", ["query", "query_learned", "query_random"])
def test_pass_through_fusion_starts_as_its_first_input(flow_type):
    """FUSION_INIT "pass_through": the fused flow starts equal to the pixel flow (the query
    flow where there is none), for every query; the query flow still gets a gradient."""
    model = small(flow_type, fusion_init="pass_through")
    decoder = model.decoder
    captured = {}
    handle = decoder.fuse_layer.register_forward_hook(lambda m, i, o: captured.update(inputs=i[0]))
    image, key = frames()
    flow = model(image, key, queries(), [(64, 64)])
    handle.remove()
    inputs = captured["inputs"].unflatten(0, flow.shape[:2])  # (B, Q, 4 or 2, h, w)
    assert torch.allclose(flow, inputs[:, :, :2], atol=1e-6)
    assert flow.abs().max() > 1e-3  # a real flow, not the official constant
    if decoder.use_pixel_flow:
        assert torch.equal(inputs[:, 0, :2], inputs[:, 1, :2])  # one pixel flow for all queries
    flow.sum().backward()
    assert decoder.fuse_layer.conv.weight.grad[:, -2:].abs().sum() > 0


def test_fusion_init_is_checked():
    with pytest.raises(ValueError, match="FUSION_INIT"):
        small("query", fusion_init="zeros")


def test_prepare_inputs_normalises_pads_zeroes_and_halves():
    model = small()
    image, key = frames(2, 20, 30)
    image[1, :, 17:] = 255.0  # beyond item 1's true size (17, 25): must be ignored
    key[1, :, :, 25:] = 255.0
    sizes = [(20, 30), (17, 25)]
    x = model.prepare_inputs(image, key, sizes)

    mean = torch.tensor([0.411, 0.432, 0.450]).view(3, 1, 1)
    full = torch.zeros(2, 6, 32, 32)  # padded to 32, zero after normalisation
    for b, (h, w) in enumerate(sizes):
        full[b, :3, :h, :w] = image[b, :, :h, :w] / 255 - mean  # current frame first
        full[b, 3:, :h, :w] = key[b, :, :h, :w] / 255 - mean
    # bilinear x0.5 (align_corners False) = mean of each 2x2 block
    expected = full.unflatten(3, (16, 2)).unflatten(2, (16, 2)).mean((3, 5))
    assert x.shape == (2, 6, 16, 16)
    torch.testing.assert_close(x, expected)
    assert x[0, 0, 0, 0] == pytest.approx((image[0, 0, :2, :2].mean() / 255 - 0.411).item(), abs=1e-6)
    assert torch.all(x[1, :, 9:] == 0) and torch.all(x[0, :, 10:] == 0)


def test_crop_like_keeps_top_left():
    x = torch.arange(24.0).view(1, 1, 4, 6)
    assert torch.equal(crop_like(x, torch.zeros(1, 1, 3, 5)), x[..., :3, :5])


def test_flow_head_keeps_queries_independent():
    decoder = small().decoder
    torch.nn.init.normal_(decoder.fuse_layer.conv.weight)
    final = torch.randn(NUM_QUERIES, 2, HIDDEN)
    motion, pixel = torch.randn(2, 8, 6, 7), torch.randn(2, 2, 6, 7)
    with torch.no_grad():
        flow = decoder.flow_head(final, motion, pixel)
        changed = final.clone()
        changed[3, 1] += torch.randn(HIDDEN)
        flow2 = decoder.flow_head(changed, motion, pixel)
    assert flow.shape == (2, NUM_QUERIES, 2, 6, 7)
    differs = (flow2 - flow).abs().amax((2, 3, 4)) > 0
    expected = torch.zeros(2, NUM_QUERIES, dtype=torch.bool)
    expected[1, 3] = True
    assert torch.equal(differs, expected)


def test_query_flow_reads_x_from_second_half_of_motion_map():
    decoder = small().decoder
    last = decoder.scale_layer.layers[-1]
    with torch.no_grad():  # first half of the motion map (channels 0..C-1) := 0
        last.weight[:HIDDEN] = 0
        last.bias[:HIDDEN] = 0
        flow = decoder.query_flow(torch.randn(NUM_QUERIES, 1, HIDDEN), torch.randn(1, 8, 4, 4))
    assert torch.all(flow[:, :, 1] == 0)  # dy
    assert flow[:, :, 0].abs().min() > 0  # dx


def test_refine_accumulates_embeddings_in_the_stream():
    # with every layer an identity (pre-norm, zero output projections), what is left is the
    # official stream: query_embed re-added at each of the 6 layers, pos at each of the 2
    # visits of a level
    decoder = small(pre_norm=True, decoder_layers=6).decoder
    with torch.no_grad():
        for layer in decoder.transformer_self_attention_layers:
            layer.self_attn.out_proj.weight.zero_()
            layer.self_attn.out_proj.bias.zero_()
        for layer in decoder.transformer_ffn_layers:
            layer.linear2.weight.zero_()
            layer.linear2.bias.zero_()
        start = torch.randn(NUM_QUERIES, 2, HIDDEN)
        levels = [torch.randn(2, 16, 4, 5), torch.randn(2, 16, 2, 3), torch.randn(2, 32, 1, 2)]
        final, (r4, r5, r6) = decoder.refine(start, levels)
        proj6 = decoder.input_proj[0](levels[2]) + decoder.level_embed.weight[0].view(1, -1, 1, 1)
        proj4 = decoder.input_proj[2](levels[0]) + decoder.level_embed.weight[2].view(1, -1, 1, 1)
    torch.testing.assert_close(final, start + 6 * decoder.query_embed.weight.unsqueeze(1))
    torch.testing.assert_close(r6, proj6 + 2 * decoder.pe_layer(proj6))
    torch.testing.assert_close(r4, proj4 + 2 * decoder.pe_layer(proj4))
    assert r5.shape == (2, HIDDEN, 2, 3)


def run(model, image, key, key_queries):
    with torch.no_grad():
        return model(image, key, key_queries, [tuple(image.shape[-2:])] * image.shape[0])


@pytest.mark.parametrize("flow_type", FLOW_TYPES)
def test_gradients_reach_every_parameter(flow_type):
    model = small(flow_type)
    if model.decoder.use_query_flow:
        randomize_fusion(model)
    image, key = frames(2)
    flow = model(image, key, queries(2), [(64, 64), (60, 50)])
    (flow * torch.randn(flow.shape, generator=torch.Generator().manual_seed(3))).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_query_flow_fuses_pixel_flow_and_key_queries():
    model = small("query").eval()
    randomize_fusion(model)
    image, key = frames()
    flow = run(model, image, key, queries())
    assert (flow[:, 0] - flow[:, 1]).abs().max() > 1e-4  # one map per query
    assert not torch.allclose(run(model, image, key, queries(seed=5)), flow)
    with torch.no_grad():
        model.decoder.predict_flow.conv.weight.mul_(2)  # the pixel-flow branch feeds the output
    assert not torch.allclose(run(model, image, key, queries()), flow)


def test_pixel_variant_shares_one_map_and_ignores_queries():
    model = small("pixel").eval()
    image, key = frames()
    flow = run(model, image, key, queries())
    assert torch.equal(flow, flow[:, :1].expand_as(flow))
    assert torch.equal(run(model, image, key, None), flow)
    assert torch.equal(run(model, image, key, queries(seed=5)), flow)
    assert not torch.allclose(run(model, key, image, None), flow)  # it does see the frames


def test_query_random_ignores_key_queries():
    model = small("query_random").eval()
    randomize_fusion(model)
    image, key = frames()
    flow = run(model, image, key, queries())
    assert torch.equal(run(model, image, key, queries(seed=5)), flow)
    assert torch.equal(run(model, image, key, None), flow)
    assert (flow[:, 0] - flow[:, 1]).abs().max() > 1e-4  # the learnable queries differ


def test_query_learned_has_no_pixel_branch():
    model = small("query_learned").eval()
    randomize_fusion(model)
    assert not any("deconv" in n or "predict_flow" in n for n, _ in model.named_parameters())
    image, key = frames()
    flow = run(model, image, key, queries())
    assert not torch.allclose(run(model, image, key, queries(seed=5)), flow)
    # the output is the fusion conv over the query flow alone
    with torch.no_grad():
        feats = model.encoder(model.prepare_inputs(image, key, [(64, 64)]))
        final, _ = model.decoder.refine(queries().transpose(0, 1), feats[2:])
        expected = model.decoder.flow_head(final, feats[0])
    torch.testing.assert_close(flow, expected)


def test_query_for_pf_warps_with_query_aware_pixel_flow():
    model = small("query_for_pf").eval()
    image, key = frames()
    flow = run(model, image, key, queries())
    assert torch.equal(flow, flow[:, :1].expand_as(flow))
    assert not torch.allclose(run(model, image, key, queries(seed=5)), flow)  # the queries shape it


def test_decoder_parts_validation():
    with pytest.raises(ValueError, match="query_flow needs attend"):
        MotionDecoder(level_channels=(8, 8, 16, 16, 32), attend=False, pixel_flow=True, query_flow=True)


def test_initial_weights_are_the_releases_at_the_same_seed(reference_dir):
    """The release's own constructor, run after torch.manual_seed(s) at a small config
    (tests/data/official/generate/mpvss_init.py), against ours at the same seed and sizes:
    every tensor equal, so training from a seed starts where the release's does (its motion
    decoder builds layer i's self-attention and FFN before layer i + 1's)."""
    fixture = torch.load(reference_dir / "official" / "mpvss_init_order.pt", map_location="cpu", weights_only=True)
    s = fixture["settings"]
    planes = s["ENCODER_INPLANES"]
    sizes = dict(num_queries=s["NUM_FLOW_QUERIES"], hidden_dim=s["HIDDEN_DIM"], nheads=s["NHEADS"],
                 dim_feedforward=s["DIM_FEEDFORWARD"], decoder_layers=s["DECODER_LAYERS"],
                 encoder_channels=(*planes[1:], 2 * planes[-1]))
    assert list(sizes["encoder_channels"][3:]) == s["IN_CHANNELS"]
    for seed in fixture["seeds"]:
        torch.manual_seed(seed)
        state = FlowEstimator(**sizes).state_dict()
        assert "\n".join(state) == fixture["names"]
        assert [list(v.shape) for v in state.values()] == fixture["shapes"]
        stats = torch.tensor([[float(v.double().sum()), float(v.double().abs().sum())] for v in state.values()],
                             dtype=torch.float64)
        ends = torch.stack([torch.cat([v.flatten()[:2], v.flatten()[-2:]]) for v in state.values()])
        differ = [n for n, a, b, c, d in zip(state, stats, fixture["stats"][seed], ends, fixture["ends"][seed])
                  if not (torch.allclose(a, b, rtol=1e-9, atol=1e-9) and torch.equal(c, d))]
        assert differ == [], f"seed {seed}: {len(differ)} of {len(state)} tensors differ, e.g. {differ[:3]}"

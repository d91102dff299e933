"""MPVSS mask propagation: warping, key-frame policy, the per-video cache, training."""
import copy

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_backbone, build_model, build_sem_seg_head
from detectron2.structures import Instances
from torch import nn
from torch.nn import functional as F

from conftest import REPO, read_key_list
from vss import add_vss_config
from vss.engine import setup_cfg
from vss.modeling import VideoSegmentor
from vss.modeling.mask2former import build_criterion
from vss.modeling.mpvss.flow import FlowEstimator
from vss.modeling.mpvss.keyframes import KeyFrameCache, KeyFramePolicy, mask_confidence
from vss.modeling.mpvss import propagation
from vss.modeling.mpvss.propagation import MaskPropagation
from vss.modeling.mpvss.warp import upsample_flow, warp_masks

TRAINABLE = ["temporal.flow", "sem_seg_head.predictor.class_embed", "sem_seg_head.predictor.mask_embed"]
SIZE = 64  # frames are SIZE x SIZE


# ---------------------------------------------------------------------------- warping


def constant_flow(b, q, h, w, dx, dy):
    flow = torch.zeros(b, q, 2, h, w, dtype=torch.float64)
    flow[:, :, 0], flow[:, :, 1] = dx, dy
    return flow


def test_zero_flow_returns_the_key_masks_exactly():
    masks = torch.randn(2, 3, 17, 23) * 30
    assert torch.equal(warp_masks(masks, torch.zeros(2, 3, 2, 17, 23)), masks)
    # a coarser zero flow too (upsampled, still zero)
    assert torch.equal(warp_masks(masks, torch.zeros(2, 3, 2, 5, 6)), masks)


def test_integer_flow_is_a_shift():
    masks = torch.randn(1, 2, 12, 16)
    # backward flow: the output at p samples the key mask at p + (dx, dy) = p + (3, -2)
    out = warp_masks(masks, constant_flow(1, 2, 12, 16, 3, -2).float())
    assert torch.equal(out[..., 2:, :-3], masks[..., :-2, 3:])
    # each query has its own flow
    flow = torch.zeros(1, 2, 2, 12, 16)
    flow[0, 1, 0] = 1
    out = warp_masks(masks, flow)
    assert torch.equal(out[0, 0], masks[0, 0])
    assert torch.equal(out[0, 1, :, :-1], masks[0, 1, :, 1:])


def test_border_padding_repeats_the_edge():
    masks = torch.arange(20.0).view(1, 1, 4, 5)
    out = warp_masks(masks, constant_flow(1, 1, 4, 5, 100, 0).float())
    assert torch.equal(out[0, 0], masks[0, 0, :, 4:].expand(4, 5))  # every pixel samples beyond the right edge
    out = warp_masks(masks, constant_flow(1, 1, 4, 5, 0, -2.5).float())
    assert torch.equal(out[0, 0, :3], masks[0, 0, :1].expand(3, 5))  # rows 0..2 sample above row 0
    assert torch.allclose(out[0, 0, 3], 0.5 * (masks[0, 0, 0] + masks[0, 0, 1]))


def test_fractional_flow_interpolates_bilinearly():
    masks = torch.randn(1, 1, 6, 7, dtype=torch.float64)
    out = warp_masks(masks, constant_flow(1, 1, 6, 7, 0.25, 0.5))
    m = masks[0, 0]
    expected = 0.5 * (0.75 * m[:-1, :-1] + 0.25 * m[:-1, 1:]) + 0.5 * (0.75 * m[1:, :-1] + 0.25 * m[1:, 1:])
    assert torch.allclose(out[0, 0, :-1, :-1], expected)


def test_flow_upsampling_scales_displacements_per_axis():
    # flow grid 4x smaller in x, 2x smaller in y: (1, 1) flow-grid pixels = (4, 2) mask pixels
    flow = torch.ones(1, 2, 3, 4)
    up = upsample_flow(flow, (6, 16))
    assert up.shape == (1, 2, 6, 16)
    assert torch.equal(up[0, 0], torch.full((6, 16), 4.0)) and torch.equal(up[0, 1], torch.full((6, 16), 2.0))
    masks = torch.randn(1, 1, 6, 16)
    out = warp_masks(masks, flow[None])
    assert torch.equal(out[..., :-2, :-4], masks[..., 2:, 4:])
    # a non-constant flow is resized bilinearly (align_corners False) before scaling
    ramp = torch.arange(4.0).view(1, 1, 1, 4).expand(1, 2, 3, 4)
    expected = F.interpolate(ramp, size=(6, 16), mode="bilinear", align_corners=False)
    assert torch.allclose(upsample_flow(ramp, (6, 16)), expected * torch.tensor([4.0, 2.0]).view(1, 2, 1, 1))


def test_stacked_predictions_and_shared_flow():
    masks = torch.randn(2, 3, 4, 8, 9, dtype=torch.float64)
    flow = torch.randn(2, 3, 2, 4, 5, dtype=torch.float64)
    stacked = warp_masks(masks, flow)
    for p in range(4):
        assert torch.allclose(stacked[:, :, p], warp_masks(masks[:, :, p], flow))
    shared = warp_masks(masks, flow[:, :1])
    assert torch.allclose(shared, warp_masks(masks, flow[:, :1].expand(-1, 3, -1, -1, -1)))


def test_warp_gradients():
    masks = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    # non-integer, inside the frame: bilinear weights are differentiable in the flow there
    flow = (torch.rand(1, 2, 2, 5, 6, dtype=torch.float64) * 0.8 + 0.1).requires_grad_()
    assert torch.autograd.gradcheck(warp_masks, (masks, flow))


def test_warp_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="flow must be"):
        warp_masks(torch.zeros(1, 3, 4, 4), torch.zeros(1, 2, 2, 4, 4))
    with pytest.raises(ValueError, match="mask_logits must be"):
        warp_masks(torch.zeros(3, 4, 4), torch.zeros(1, 3, 2, 4, 4))


def release_warp(masks, flow):
    """The release's warp restated from its definition (OFFICIAL_CODE_FACTS 1.5), in float64,
    one (h, w) map at a time: flow resized by s = w / wf (bilinear, half-pixel centres, source
    index clamped at 0) and scaled by s on both axes; the sample for pixel (x, y) is at
    (x + dx) (w - 1) / w, (y + dy) (h - 1) / h, clamped into the frame, bilinear."""
    h, w = masks.shape[-2:]
    hf, wf = flow.shape[-2:]
    s = w / wf

    def resize(n_out, n_in):  # (n_out, n_in) bilinear weights
        a = torch.zeros(n_out, n_in, dtype=torch.float64)
        for i in range(n_out):
            src = max((i + 0.5) / s - 0.5, 0.0)
            i0 = int(src)
            i1 = min(i0 + 1, n_in - 1)
            a[i, i0] += 1 - (src - i0)
            a[i, i1] += src - i0
        return a

    up = resize(h, hf) @ flow.double() @ resize(w, wf).T * s
    px = ((torch.arange(w).view(1, w) + up[0]) * (w - 1) / w).clamp(0, w - 1)
    py = ((torch.arange(h).view(h, 1) + up[1]) * (h - 1) / h).clamp(0, h - 1)
    x0, y0 = px.floor().long(), py.floor().long()
    x1, y1 = (x0 + 1).clamp(max=w - 1), (y0 + 1).clamp(max=h - 1)
    ax, ay = px - x0, py - y0
    m = masks.double()
    return ((1 - ay) * ((1 - ax) * m[y0, x0] + ax * m[y0, x1])
            + ay * ((1 - ax) * m[y1, x0] + ax * m[y1, x1]))


@pytest.mark.parametrize("mask_size,flow_size", [
    ((24, 32), (12, 16)),  # a 90x120 frame padded to 96x128: masks at 1/4, flow at 1/8
    ((12, 20), (6, 10)),   # non-square
    ((16, 36), (4, 9)),    # s = 4
])
def test_release_warp_is_the_release_formula(mask_size, flow_size):
    g = torch.Generator().manual_seed(sum(mask_size))
    masks = torch.randn(2, 3, 2, *mask_size, generator=g, dtype=torch.float64) * 10
    flow = torch.randn(2, 3, 2, *flow_size, generator=g, dtype=torch.float64) * 3  # some samples leave the frame
    out = warp_masks(masks, flow, "release")
    for b in range(2):
        for q in range(3):
            for p in range(2):
                assert torch.allclose(out[b, q, p], release_warp(masks[b, q, p], flow[b, q]), atol=1e-10, rtol=0)
    # float32 (as the model runs it) agrees to round-off
    out32 = warp_masks(masks.float(), flow.float(), "release")
    assert out32.dtype == torch.float32 and torch.allclose(out32.double(), out, atol=1e-3)
    assert not torch.allclose(out, warp_masks(masks, flow, "exact"), atol=1e-2)


def test_release_warp_moves_masks_even_at_zero_flow():
    masks = torch.randn(1, 2, 12, 20, dtype=torch.float64) * 10
    zero = torch.zeros(1, 2, 2, 6, 10, dtype=torch.float64)
    assert torch.equal(warp_masks(masks, zero, "exact"), masks)
    out = warp_masks(masks, zero, "release")
    # pixel (x, y) samples (x * 19 / 20, y * 11 / 12): the first row and column stay, the rest move
    assert torch.allclose(out[..., 0, 0], masks[..., 0, 0])
    x, y = 19 * 19 / 20, 11 * 11 / 12  # where the last pixel samples
    m = masks[..., int(y):int(y) + 2, int(x):int(x) + 2]
    ax, ay = x - int(x), y - int(y)
    expected = ((1 - ay) * ((1 - ax) * m[..., 0, 0] + ax * m[..., 0, 1])
                + ay * ((1 - ax) * m[..., 1, 0] + ax * m[..., 1, 1]))
    assert torch.allclose(out[..., -1, -1], expected)
    assert (out - masks).abs().max() > 1


def test_release_warp_needs_one_scale_for_both_axes():
    with pytest.raises(ValueError, match="MODEL.MPVSS.WARP 'release'.*does not cover the 12x20 masks"):
        warp_masks(torch.zeros(1, 1, 12, 20), torch.zeros(1, 1, 2, 5, 10), "release")
    with pytest.raises(ValueError, match="MODEL.MPVSS.WARP must be one of"):
        warp_masks(torch.zeros(1, 1, 12, 20), torch.zeros(1, 1, 2, 6, 10), "mmtrack")


def test_release_warp_shared_flow_and_gradients():
    masks = torch.randn(1, 3, 2, 6, 8, dtype=torch.float64, requires_grad=True)
    flow = (torch.rand(1, 1, 2, 3, 4, dtype=torch.float64) * 0.8 + 0.1).requires_grad_()
    shared = warp_masks(masks, flow, "release")
    assert torch.allclose(shared, warp_masks(masks, flow.expand(-1, 3, -1, -1, -1), "release"))
    assert torch.autograd.gradcheck(lambda m, f: warp_masks(m, f, "release"), (masks, flow))


# ---------------------------------------------------------------------------- key frames


def cache_at(frame_idx, key_confidence=None, last_confidence=None):
    t = torch.zeros(1)
    return KeyFrameCache(frame_idx, t, (1, 1), t, t, t, key_confidence, last_confidence)


def schedule(policy, n, confidences=None):
    """Key-frame flags of n frames; confidences[i] is frame i's confidence when propagated."""
    flags, cache = [], None
    for i in range(n):
        key = policy.is_key(i, cache)
        flags.append(int(key))
        if key:
            cache = cache_at(i, key_confidence=1.0 if policy.adaptive else None)
        elif policy.adaptive:
            cache = cache_at(cache.frame_idx, 1.0, confidences[i])
    return flags


@pytest.mark.parametrize("interval", [1, 2, 5])
def test_fixed_interval(interval):
    flags = schedule(KeyFramePolicy(interval), 12)
    assert flags == [int(i % interval == 0) for i in range(12)]


def test_fixed_interval_with_skipped_frames_never_propagates_further():
    policy = KeyFramePolicy(5)
    assert not policy.is_key(4, cache_at(0)) and policy.is_key(7, cache_at(0))


def test_adaptive_policy():
    policy = KeyFramePolicy(4, adaptive=True, min_confidence_ratio=0.9)
    confident = [1.0] * 10
    assert schedule(policy, 10, confident) == [1, 0, 0, 0, 1, 0, 0, 0, 1, 0]  # the interval caps it
    # frame 2's confidence falls below 0.9 x the key's: frame 3 is a key frame
    dropping = [1.0, 0.95, 0.8, 1.0, 1.0, 0.85, 1.0, 1.0, 1.0, 1.0]
    assert schedule(policy, 10, dropping) == [1, 0, 0, 1, 0, 0, 1, 0, 0, 0]
    fixed = KeyFramePolicy(4, min_confidence_ratio=0.9)
    assert schedule(fixed, 10) == [1, 0, 0, 0, 1, 0, 0, 0, 1, 0]


def test_policy_rejects_bad_settings():
    with pytest.raises(ValueError, match="KEY_INTERVAL"):
        KeyFramePolicy(0)
    with pytest.raises(ValueError, match="KEY_MIN_CONFIDENCE_RATIO"):
        KeyFramePolicy(2, adaptive=True, min_confidence_ratio=0.0)


def test_mask_confidence():
    big = 50.0
    # one query, certain of class 1 everywhere
    cls = torch.tensor([[-big, big, -big, -big]])
    assert mask_confidence(cls, torch.full((1, 3, 3), big)) == pytest.approx(1.0)
    # two queries covering every pixel with classes 0 and 1: each pixel is split evenly
    cls = torch.tensor([[big, -big, -big, -big], [-big, big, -big, -big]])
    assert mask_confidence(cls, torch.full((2, 3, 3), big)) == pytest.approx(0.5)
    # query 1 covers only the left column: there the share is 1/2, elsewhere 1
    masks = torch.full((2, 3, 3), big)
    masks[1, :, 1:] = -big
    assert mask_confidence(cls, masks) == pytest.approx((3 * 0.5 + 6 * 1.0) / 9)


# ---------------------------------------------------------------------------- the model


def tiny_flow(flow_type="query"):
    """A reduced FlowEstimator for the tiny Mask2Former (16 queries of width 64), the same
    weights at every call, recording the frames of each forward in `calls`.

    The fusion conv gets random weights: the official init (weight 0, bias 1) outputs
    flow 1 whatever the frames, and blocks every gradient upstream of it.
    """
    torch.manual_seed(0)
    flow = FlowEstimator(flow_type=flow_type, num_queries=16, hidden_dim=64, nheads=4, dim_feedforward=128,
                         decoder_layers=3, encoder_channels=(16, 32, 32, 64, 64, 64))
    if hasattr(flow.decoder, "fuse_layer"):
        nn.init.normal_(flow.decoder.fuse_layer.conv.weight, std=0.1)
    flow.calls = []
    flow.register_forward_pre_hook(lambda module, args: module.calls.append((args[0].clone(), args[1].clone())))
    return flow


class ConstantFlow(nn.Module):
    """A known flow: (dx, dy) everywhere on the 1/8 grid."""

    size_divisibility = 32

    def __init__(self, dx, dy):
        super().__init__()
        self.value = (dx, dy)

    def forward(self, images, key_images, key_queries, image_sizes):
        b, q = key_queries.shape[:2]
        flow = images.new_zeros(b, q, 2, images.shape[-2] // 8, images.shape[-1] // 8)
        flow[:, :, 0], flow[:, :, 1] = self.value
        return flow


@pytest.fixture(scope="module")
def cfg():
    cfg = get_cfg()
    add_vss_config(cfg)
    cfg.merge_from_file(str(REPO / "configs/synthetic/mask2former_tiny.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    # a ResNet-18 with BatchNorm instead of the tiny Swin: no stochastic depth in the frozen
    # backbone, and frozen BN statistics are part of what is checked
    cfg.MODEL.BACKBONE.NAME = "build_resnet_backbone"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.MASK_FORMER.TRAIN_NUM_POINTS = 256
    return cfg


@pytest.fixture(scope="module")
def segmentor_parts(cfg):
    """(backbone, sem_seg_head) with fixed random weights, copied into every model."""
    torch.manual_seed(0)
    backbone = build_backbone(cfg)
    return backbone, build_sem_seg_head(cfg, backbone.output_shape())


def mpvss(cfg, parts, flow, interval=5, adaptive=False, max_open=2, trainable=(), warp="exact"):
    backbone, head = copy.deepcopy(parts)
    temporal = MaskPropagation(flow=flow, criterion=build_criterion(cfg),
                               policy=KeyFramePolicy(interval, adaptive, 0.99), warp=warp)
    return VideoSegmentor(backbone=backbone, sem_seg_head=head, temporal=temporal,
                          pixel_mean=cfg.MODEL.PIXEL_MEAN, pixel_std=cfg.MODEL.PIXEL_STD,
                          size_divisibility=32, max_open_videos=max_open, trainable=trainable)


def video(name, n, seed):
    """Frames of a textured square moving 4 px right per frame over a smooth background."""
    g = torch.Generator().manual_seed(seed)
    background = F.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=(SIZE, SIZE), mode="bilinear")[0]
    texture = torch.rand(3, 16, 16, generator=g)
    frames = []
    for i in range(n):
        image = background.clone()
        x = 8 + 4 * i
        image[:, 20:36, x:x + 16] = texture
        frames.append({"image": (image * 255).to(torch.uint8), "height": SIZE, "width": SIZE,
                       "video_id": name, "frame_idx": i})
    return frames


def run(model, frames):
    with torch.no_grad():
        return [model([f])[0]["sem_seg"] for f in frames]


def count_key_frames(model):
    """List that receives one entry per sem_seg_head call (= per key frame at inference)."""
    calls = []
    model.sem_seg_head.register_forward_hook(lambda *_: calls.append(1))
    return calls


def key_flags(model, frames):
    """Run the frames one by one; 1 for each frame that was a key frame."""
    keys = count_key_frames(model)
    flags = []
    for frame in frames:
        before = len(keys)
        run(model, [frame])
        flags.append(len(keys) - before)
    return flags


def test_inference_schedule_and_flow_inputs(cfg, segmentor_parts):
    model = mpvss(cfg, segmentor_parts, tiny_flow(), interval=3).eval()
    frames = video("a", 7, 0)
    assert key_flags(model, frames) == [1, 0, 0, 1, 0, 0, 1]
    # each non-key frame: flow from (itself, its latest key frame), unnormalised and unpadded at 64x64
    calls = model.temporal.flow.calls
    assert len(calls) == 4
    for (current, key), t, k in zip(calls, (1, 2, 4, 5), (0, 0, 3, 3)):
        assert torch.equal(current[0], frames[t]["image"].float()) and torch.equal(key[0], frames[k]["image"].float())


def test_zero_flow_on_the_same_image_reproduces_the_key_output(cfg, segmentor_parts):
    frame = video("a", 1, 0)[0]
    same = [frame, dict(frame, frame_idx=1), dict(frame, frame_idx=2)]
    for flow in (ConstantFlow(0.0, 0.0), None):  # zero flow, and the "copy" variant
        out = run(mpvss(cfg, segmentor_parts, flow, interval=5).eval(), same)
        assert torch.allclose(out[1], out[0], atol=1e-6) and torch.allclose(out[2], out[0], atol=1e-6)


def test_the_release_warp_moves_the_key_prediction_even_at_zero_flow(cfg, segmentor_parts, monkeypatch):
    frame = video("a", 1, 0)[0]
    same = [frame, dict(frame, frame_idx=1)]
    warps = []
    monkeypatch.setattr(propagation, "warp_masks", lambda m, f, mode: warps.append(mode) or warp_masks(m, f, mode))
    out = run(mpvss(cfg, segmentor_parts, ConstantFlow(0.0, 0.0), warp="release").eval(), same)
    assert warps == ["release"]
    assert not torch.allclose(out[1], out[0], atol=1e-3)


def test_flow_moves_the_key_prediction(cfg, segmentor_parts):
    frame = video("a", 1, 0)[0]
    # 0.5 px on the 1/8 grid = 1 px of the 1/4 mask grid = 4 px of the frame
    out = run(mpvss(cfg, segmentor_parts, ConstantFlow(0.5, 0.0), interval=5).eval(),
              [frame, dict(frame, frame_idx=1)])
    assert torch.allclose(out[1][:, :, 4:-8], out[0][:, :, 8:-4], atol=1e-5)
    assert not torch.allclose(out[1], out[0], atol=1e-3)


def test_a_new_video_starts_with_a_key_frame(cfg, segmentor_parts):
    model = mpvss(cfg, segmentor_parts, tiny_flow(), interval=5, max_open=1).eval()
    keys = count_key_frames(model)
    a, b = video("a", 2, 0), video("b", 2, 1)
    run(model, a)
    out_b = run(model, b)
    assert len(keys) == 2  # frame 0 of a and frame 0 of b
    (_, key_a), (_, key_b) = model.temporal.flow.calls
    assert torch.equal(key_b[0], b[0]["image"].float())
    alone = run(mpvss(cfg, segmentor_parts, tiny_flow(), interval=5).eval(), b)
    assert all(torch.equal(x, y) for x, y in zip(out_b, alone))


def test_interleaved_videos_equal_separate_runs(cfg, segmentor_parts):
    a, b = video("a", 3, 0), video("b", 3, 1)
    sep_a = run(mpvss(cfg, segmentor_parts, tiny_flow(), interval=2).eval(), a)
    sep_b = run(mpvss(cfg, segmentor_parts, tiny_flow(), interval=2).eval(), b)
    mixed = run(mpvss(cfg, segmentor_parts, tiny_flow(), interval=2).eval(), [x for pair in zip(a, b) for x in pair])
    assert all(torch.equal(x, y) for x, y in zip(mixed[0::2], sep_a))
    assert all(torch.equal(x, y) for x, y in zip(mixed[1::2], sep_b))


def test_adaptive_policy_through_the_model(cfg, segmentor_parts, monkeypatch):
    # scripted confidences, in call order: key frames and propagated frames both measure theirs
    scripted = iter([1.0, 0.995, 0.5, 1.0, 0.995, 0.995])
    monkeypatch.setattr(propagation, "mask_confidence", lambda class_logits, mask_logits: next(scripted))
    model = mpvss(cfg, segmentor_parts, tiny_flow(), interval=10, adaptive=True).eval()
    assert key_flags(model, video("a", 6, 0)) == [1, 0, 0, 1, 0, 0]  # frame 2 fell below 0.99 x the key's confidence


def test_frame_size_change_within_a_video_is_an_error(cfg, segmentor_parts):
    model = mpvss(cfg, segmentor_parts, tiny_flow()).eval()
    frame = video("a", 1, 0)[0]
    smaller = dict(frame, frame_idx=1, image=frame["image"][:, :32])
    with pytest.raises(ValueError, match="video 'a' frame 1: image size"):
        run(model, [frame, smaller])


# ---------------------------------------------------------------------------- training


def pair_batch(n=2):
    """Pair samples: key frame 0 and labelled frame 2 of a video (square moved 8 px)."""
    batch = []
    for seed in range(n):
        frames = video(str(seed), 3, seed)
        label = torch.zeros(SIZE, SIZE, dtype=torch.long)
        label[20:36, 16:32] = 1 + seed
        instances = Instances((SIZE, SIZE))
        classes = torch.unique(label)
        instances.gt_classes = classes
        instances.gt_masks = label[None] == classes[:, None, None]
        batch.append(dict(frames[2], sem_seg=label, instances=instances, key_image=frames[0]["image"],
                          key_frame_idx=0, file_name=f"video{seed}/2.jpg"))
    return batch


def total(losses):
    return sum(losses.values())


def test_gradients_reach_only_the_trainable_parameters(cfg, segmentor_parts):
    model = mpvss(cfg, segmentor_parts, tiny_flow(), trainable=TRAINABLE).train()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns
    stats = [(m.running_mean.clone(), m.running_var.clone()) for m in bns]
    losses = model(pair_batch())
    assert len(losses) == 3 * cfg.MODEL.MASK_FORMER.DEC_LAYERS  # ce, mask, dice for all predictions
    total(losses).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    trainable = {n for n, p in model.named_parameters() if n.startswith(tuple(TRAINABLE))}
    assert with_grad == trainable
    assert all(p.grad is None for n, p in model.named_parameters() if n not in trainable)
    for m, (mean, var) in zip(bns, stats):
        assert not m.training and torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var)


def test_losses_warp_every_prediction_with_the_flow(cfg, segmentor_parts):
    """Zero flow trains on the key frame's own predictions; a flow changes all of them."""
    batch = pair_batch()
    losses = {}
    for name, flow in (("copy", None), ("zero", ConstantFlow(0.0, 0.0)), ("moved", ConstantFlow(1.0, 0.0))):
        model = mpvss(cfg, segmentor_parts, flow).train()
        torch.manual_seed(0)  # same sampled points
        losses[name] = model(batch)
    assert all(torch.allclose(losses["copy"][k], losses["zero"][k]) for k in losses["copy"])
    assert all(not torch.allclose(losses["copy"][k], losses["moved"][k]) for k in losses["copy"]
               if k.startswith(("loss_mask", "loss_dice")))


def test_losses_need_pair_samples(cfg, segmentor_parts):
    model = mpvss(cfg, segmentor_parts, tiny_flow()).train()
    batch = pair_batch(1)
    del batch[0]["key_image"]
    with pytest.raises(ValueError, match="INPUT.VIDEO.SAMPLER to 'pair'"):
        model(batch)


@pytest.mark.slow
def test_loss_decreases_on_a_fixed_pair_batch(cfg, segmentor_parts):
    torch.manual_seed(0)
    model = mpvss(cfg, segmentor_parts, tiny_flow(), trainable=TRAINABLE).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    batch = pair_batch()
    history = []
    for _ in range(8):
        torch.manual_seed(0)
        loss = total(model(batch))
        history.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert history[-1] < 0.9 * history[0], history


# ---------------------------------------------------------------------------- configs


def build_from(config, opts=()):
    cfg = setup_cfg(str(REPO / config), ["MODEL.DEVICE", "meta", *opts])
    with torch.device("meta"):
        return build_model(cfg)


def test_vspw_config_maps_the_flow_module_to_the_official_names(reference_dir):
    model = build_from("configs/vspw/mpvss/R50.yaml")
    official = {f"temporal.flow.{k}": v for k, v in read_key_list(reference_dir / "mpvss_flow_keys.txt").items()}
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items() if k.startswith("temporal.flow.")}
    assert ours == official
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # flow module + class_embed (256 -> 125) + mask_embed (3 x 256 -> 256)
    assert trainable == 40_085_146 + 256 * 125 + 125 + 3 * (256 * 256 + 256)
    assert model.temporal.policy == KeyFramePolicy(5)


@pytest.mark.parametrize("variant,flow_type", [
    ("query_flow", "query"), ("optical_flow", "pixel"), ("query_learned", "query_learned"),
    ("query_random", "query_random"), ("query_for_pf", "query_for_pf"), ("copy", None),
])
def test_synthetic_variant_configs(variant, flow_type):
    model = build_from(f"configs/synthetic/mpvss_{variant}.yaml", ["MODEL.WEIGHTS", ""])
    if flow_type is None:
        assert model.temporal.flow is None
        assert not any(n.startswith("temporal.flow") for n, _ in model.named_parameters())
    else:
        assert model.temporal.flow.flow_type == flow_type
        assert {n.split(".")[2] for n, _ in model.named_parameters() if n.startswith("temporal.flow")} == {
            "encoder", "decoder"}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad and not n.startswith("temporal.flow")}
    assert {".".join(n.split(".")[:3]) for n in trainable} == {
        "sem_seg_head.predictor.class_embed", "sem_seg_head.predictor.mask_embed"}


def test_bad_mpvss_keys_are_errors():
    with pytest.raises(ValueError, match="MODEL.MPVSS.PROPAGATION"):
        build_from("configs/synthetic/mpvss_copy.yaml", ["MODEL.MPVSS.PROPAGATION", "warp"])
    with pytest.raises(ValueError, match="MODEL.MPVSS.KEY_POLICY"):
        build_from("configs/synthetic/mpvss_copy.yaml", ["MODEL.MPVSS.KEY_POLICY", "sometimes"])
    with pytest.raises(ValueError, match="MODEL.MPVSS.WARP must be one of"):
        build_from("configs/synthetic/mpvss_copy.yaml", ["MODEL.MPVSS.WARP", "mmtrack"])


def test_warp_key_reaches_the_model():
    assert build_from("configs/synthetic/mpvss_query_flow.yaml", ["MODEL.WEIGHTS", ""]).temporal.warp == "exact"
    model = build_from("configs/synthetic/mpvss_query_flow.yaml", ["MODEL.WEIGHTS", "", "MODEL.MPVSS.WARP", "release"])
    assert model.temporal.warp == "release"

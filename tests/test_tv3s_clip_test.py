"""TV3S's clip test (MODEL.TV3S.INFERENCE "clip") against the release's frame lists, first frames included.

The lists below are the release's (`tools/test.py --mode 0`, O: utils/datasets/custom.py:2073-2092;
a clip of fewer than 4 frames returns the per-frame head's prediction, O: utils/models/tv3s_head.py:980-982),
written out by hand so that the rule in vss.modeling.tv3s.clips is checked against them, not against itself.
"""
import pytest
import torch

from vss.modeling.tv3s.clips import clip_frames, release_test_clip
from vss.modeling.backbone.mit import MiT
from vss.modeling.postprocess import sem_seg_output
from vss.modeling.segformer_head import SegFormerHead
from vss.modeling.tv3s import ClipState, StateSpaceSharing
from vss.modeling.video_segmentor import VideoSegmentor

RELEASE = [None, None, None,  # t = 0, 1, 2: the per-frame head alone
           [0, 1, 2, 3], [0, 2, 3, 4], [0, 2, 4, 5], [0, 2, 4, 6], [0, 3, 5, 7], [0, 3, 6, 8],
           [0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11], [3, 6, 9, 12]]


def test_release_test_clips_for_the_first_13_frames():
    frames = list(range(40))
    assert [release_test_clip(t, [-9, -6, -3, 0], frames, first=0) for t in range(13)] == RELEASE
    # The same positions in a video whose frame numbers start at 100.
    frames = list(range(100, 140))
    assert [release_test_clip(100 + t, [-9, -6, -3, 0], frames, first=100) for t in range(13)] == \
        [None if c is None else [100 + i for i in c] for c in RELEASE]


def test_release_test_clips_for_other_offsets():
    # Only (-9, -6, -3, 0) has special lists; otherwise the frames that exist, and the per-frame
    # head while fewer than all of them do.
    frames = list(range(10))
    assert [release_test_clip(t, [-4, -2, -1, 0], frames, first=0) for t in range(6)] == \
        [None, None, None, None, [0, 2, 3, 4], [1, 3, 4, 5]]
    assert release_test_clip(0, [0], frames, first=0) == [0]


def test_release_test_clip_over_a_gap():
    # Frames 5..8 missing: a wanted frame there is the latest one before it, as in training.
    frames = [0, 1, 2, 3, 4, 9, 10, 11, 12, 13, 14]
    assert release_test_clip(14, [-9, -6, -3, 0], frames, first=0) == [4, 4, 11, 14]
    assert release_test_clip(12, [-9, -6, -3, 0], frames, first=0) == [3, 4, 9, 12]
    assert release_test_clip(14, [-9, -6, -3, 0], frames, first=0) == clip_frames(14, [-9, -6, -3, 0], frames)


def tiny_model(offsets=(-9, -6, -3, 0)):
    torch.manual_seed(0)
    backbone = MiT(embed_dims=(8, 16, 16, 16), depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), drop_path_rate=0.0)
    head = SegFormerHead(backbone.output_shape(), num_classes=3, embed_dim=16, norm="BN")
    temporal = StateSpaceSharing(num_classes=3, embed_dim=16, window_size=4, shift=2, num_blocks=1, d_state=4,
                                 drop_path=0.0, inference="clip", clip_offsets=offsets)
    model = VideoSegmentor(backbone=backbone, sem_seg_head=head, temporal=temporal, pixel_mean=[128.0] * 3,
                           pixel_std=[64.0] * 3, size_divisibility=32, max_open_videos=2)
    with torch.no_grad():  # non-trivial BN statistics and classifier, as after training
        head.linear_fuse.bn.running_mean.uniform_(-0.5, 0.5)
        head.linear_fuse.bn.running_var.uniform_(0.5, 2.0)
        temporal.linear_pred2.weight.normal_(0, 1)
    return model.eval()


def video(n, first=0, size=(60, 90)):
    g = torch.Generator().manual_seed(1)
    base = torch.rand(3, *size, generator=g) * 255
    return [{"image": (base + 60 * torch.rand(3, *size, generator=g)).clamp(0, 255).to(torch.uint8),
             "height": 80, "width": 120, "video_id": "v", "frame_idx": first + i} for i in range(n)]


def per_frame_prediction(model, frame):
    """The per-frame SegFormer head's own test output for `frame` (its forward: logits at the padded size)."""
    images = model.preprocess_image([frame["image"].float()])
    logits, _ = model.sem_seg_head(model.backbone(images.tensor))
    return sem_seg_output(logits[0], images.image_sizes[0], frame["height"], frame["width"])["sem_seg"]


@pytest.mark.parametrize("first", [0, 7])
def test_clip_mode_equals_the_release_on_every_frame(first):
    model = tiny_model()
    frames = video(13, first)
    with torch.no_grad():
        outputs = [model([f])[0]["sem_seg"] for f in frames]
        for t, clip in enumerate(RELEASE):
            if clip is None:
                expected = per_frame_prediction(model, frames[t])
            else:
                expected = model.temporal.infer_clip(model, [frames[i] for i in clip])[-1]["sem_seg"]
            assert (outputs[t] - expected).abs().max() <= 1e-4, t
        # The first frames really skip the temporal module: its prediction differs.
        temporal_alone = model.temporal.infer_clip(model, frames[:1])[0]["sem_seg"]
        assert (outputs[0] - temporal_alone).abs().max() > 1e-2
        # and frames 3..8 differ from the clamped clips ([0, 0, 0, 3], ...) used before.
        clamped = model.temporal.infer_clip(model, [frames[0]] * 3 + [frames[3]])[-1]["sem_seg"]
        assert (outputs[3] - clamped).abs().max() > 1e-3
    state = model.states.get("v", first + 13)
    assert isinstance(state, ClipState) and state.first == first
    assert [i - first for i, _ in state.frames] == [3, 4, 5, 6, 7, 8, 9, 10, 11, 12]  # bounded


def test_clip_mode_per_frame_until_the_offsets_fit():
    model = tiny_model(offsets=(-4, -2, -1, 0))
    frames = video(6)
    with torch.no_grad():
        outputs = [model([f])[0]["sem_seg"] for f in frames]
        for t in range(4):
            assert (outputs[t] - per_frame_prediction(model, frames[t])).abs().max() <= 1e-4
        expected = model.temporal.infer_clip(model, [frames[i] for i in (1, 3, 4, 5)])[-1]["sem_seg"]
        assert (outputs[5] - expected).abs().max() <= 1e-4


def test_aligned_test_resize_scores_at_the_label_resolution():
    # A 500x1200 frame (wider than 16:9, sides not multiples of 32) is stretched to 384x864 by
    # INPUT.RESIZE_TEST "aligned"; the scores come back at 500x1200, where the labels are, by one
    # bilinear resize of the logits (align_corners=False), as mmseg's whole-image inference resizes
    # seg_logit to ori_shape.
    model = tiny_model()
    g = torch.Generator().manual_seed(2)
    frame = {"image": (torch.rand(3, 384, 864, generator=g) * 255).to(torch.uint8), "height": 500, "width": 1200,
             "video_id": "w", "frame_idx": 0}
    with torch.no_grad():
        out = model([frame])[0]["sem_seg"]
        images = model.preprocess_image([frame["image"].float()])
        assert tuple(images.tensor.shape[-2:]) == (384, 864)  # nothing padded
        logits = model.sem_seg_head.predict(model.sem_seg_head.forward_features(model.backbone(images.tensor)))
        logits = torch.nn.functional.interpolate(logits, size=(384, 864), mode="bilinear", align_corners=False)
        expected = torch.nn.functional.interpolate(logits, size=(500, 1200), mode="bilinear", align_corners=False)[0]
    assert out.shape == (3, 500, 1200)
    assert (out - expected).abs().max() <= 1e-5

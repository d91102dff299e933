"""VideoSegmentor keeps one state per video; heads stay pure."""
import pytest
import torch
from detectron2.modeling import Backbone, ShapeSpec
from torch import nn

from vss.modeling import VideoSegmentor, VideoStates


class TinyBackbone(Backbone):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return {"res2": self.conv(x)}

    def output_shape(self):
        return {"res2": ShapeSpec(channels=4, stride=1)}


class RunningMean(nn.Module):
    """A toy temporal head: the output is the running mean of the frames' features."""

    def losses(self, model, batched_inputs):
        images = model.preprocess_image([x["image"] for x in batched_inputs]).tensor
        return {"loss": model.backbone(images)["res2"].square().mean()}

    def infer(self, model, frame, state):
        images = model.preprocess_image([frame["image"]]).tensor
        feat = model.backbone(images)["res2"][0]
        total, count = state if state is not None else (torch.zeros_like(feat), 0)
        total, count = total + feat, count + 1
        return {"sem_seg": total / count}, (total, count)


def model(max_open=2):
    torch.manual_seed(0)  # every model() has the same weights
    return VideoSegmentor(backbone=TinyBackbone(), sem_seg_head=nn.Identity(), temporal=RunningMean(),
                          pixel_mean=[0.0] * 3, pixel_std=[1.0] * 3, size_divisibility=0,
                          max_open_videos=max_open).eval()


def frames(video, n, seed):
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.rand(3, 4, 5, generator=g), "video_id": video, "frame_idx": i} for i in range(n)]


def run(m, inputs):
    with torch.no_grad():
        return [m([x])[0]["sem_seg"] for x in inputs]


def test_state_carried_within_a_video_and_reset_between():
    m = model()
    a = run(m, frames("a", 3, 0))
    b = run(m, frames("b", 2, 1))
    # b starts fresh: its first output is its own first frame's features only.
    alone = run(model(), frames("b", 2, 1))
    assert all(torch.equal(x, y) for x, y in zip(b, alone))
    assert not torch.equal(a[2], run(model(), frames("a", 3, 0)[2:])[0])  # a's 3rd frame used history


def test_interleaved_videos_equal_separate_runs():
    fa, fb = frames("a", 4, 0), frames("b", 4, 1)
    interleaved = run(model(), [x for pair in zip(fa, fb) for x in pair])
    assert all(torch.equal(x, y) for x, y in zip(interleaved[0::2], run(model(), fa)))
    assert all(torch.equal(x, y) for x, y in zip(interleaved[1::2], run(model(), fb)))


def test_dropped_video_cannot_resume_and_order_is_checked():
    m = model(max_open=1)
    run(m, frames("a", 2, 0))
    run(m, frames("b", 1, 1))  # drops a
    with pytest.raises(ValueError, match="'a' came back"):
        run(m, frames("a", 3, 0)[2:])
    with pytest.raises(ValueError, match="frame 0 after frame 0"):
        run(m, frames("b", 1, 1))
    m.reset()
    run(m, frames("a", 1, 0))  # after reset every video starts afresh
    assert len(m.states) == 1


def test_a_second_evaluation_replays_videos_from_their_start():
    m = model(max_open=1)
    first = run(m, frames("a", 3, 0))
    run(m, frames("b", 2, 1))  # drops a, as a whole evaluation pass would
    m.train()
    m.eval()  # what detectron2's inference_on_dataset does before every evaluation
    second = run(m, frames("a", 3, 0))
    assert all(torch.equal(x, y) for x, y in zip(first, second))
    m.train()
    assert len(m.states) == 0  # no state of an evaluation stays alive during training


def test_images_must_have_the_normalisation_channels():
    with pytest.raises(ValueError, match=r"expected \(3, H, W\) images.*\(1, 4, 5\)"):
        model()([{"image": torch.zeros(1, 4, 5), "video_id": "a", "frame_idx": 0}])


def test_training_calls_the_temporal_losses():
    m = model().train()
    losses = m(frames("a", 2, 0))
    losses["loss"].backward()
    assert m.backbone.conv.weight.grad.abs().sum() > 0


def test_missing_video_keys_and_bad_limit():
    with pytest.raises(ValueError, match="'video_id'"):
        model()([{"image": torch.zeros(3, 4, 5), "frame_idx": 0}])
    with pytest.raises(ValueError, match="MAX_OPEN_VIDEOS"):
        VideoStates(0)


def test_trainable_prefixes_freeze_the_rest():
    torch.manual_seed(0)
    backbone = TinyBackbone()
    backbone.bn = nn.BatchNorm2d(4)
    backbone.drop = nn.Dropout(0.5)  # parameter-free, inside the frozen backbone
    m = VideoSegmentor(backbone=backbone, sem_seg_head=nn.Linear(2, 2), temporal=RunningMean(),
                       pixel_mean=[0.0] * 3, pixel_std=[1.0] * 3, size_divisibility=0,
                       trainable=["sem_seg_head."])
    assert [n for n, p in m.named_parameters() if p.requires_grad] == ["sem_seg_head.weight", "sem_seg_head.bias"]
    m.train()
    assert m.sem_seg_head.training and not m.backbone.bn.training and not m.backbone.conv.training
    assert not m.backbone.drop.training and not m.backbone.training
    with pytest.raises(ValueError, match="match no parameter"):
        VideoSegmentor(backbone=TinyBackbone(), sem_seg_head=nn.Identity(), temporal=RunningMean(),
                       pixel_mean=[0.0] * 3, pixel_std=[1.0] * 3, trainable=["flow."])


class NormBackbone(TinyBackbone):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return {"res2": self.bn(self.conv(x))}


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_frozen_mode(mode):
    torch.manual_seed(0)
    m = VideoSegmentor(backbone=NormBackbone(), sem_seg_head=nn.Linear(2, 2), temporal=RunningMean(),
                       pixel_mean=[0.0] * 3, pixel_std=[1.0] * 3, size_divisibility=0,
                       trainable=["sem_seg_head."], frozen_mode=mode).train()
    bn = m.backbone.bn
    assert [n for n, p in m.named_parameters() if p.requires_grad] == ["sem_seg_head.weight", "sem_seg_head.bias"]
    assert bn.training == (mode == "train") and m.sem_seg_head.training
    with torch.no_grad():
        raw = m.backbone.conv(torch.stack([f["image"] for f in frames("a", 2, 0)]))
    loss = m(frames("a", 2, 0))["loss"]
    if mode == "train":  # the release's: batch statistics (the output has unit variance), running stats move
        assert loss.item() == pytest.approx(1.0, abs=1e-3)
        assert torch.allclose(bn.running_mean, 0.1 * raw.mean((0, 2, 3)), atol=1e-6)
        assert bn.num_batches_tracked.item() == 1
    else:  # running statistics (the initial 0 / 1: the output is the conv's), left as they were
        assert loss.item() == pytest.approx(raw.square().mean().item() / (1 + bn.eps), rel=1e-6)
        assert torch.equal(bn.running_mean, torch.zeros(4)) and bn.num_batches_tracked.item() == 0
    with pytest.raises(ValueError, match="MODEL.VIDEO.FROZEN_MODE is 'frozen'"):
        VideoSegmentor(backbone=NormBackbone(), sem_seg_head=nn.Identity(), temporal=RunningMean(),
                       pixel_mean=[0.0] * 3, pixel_std=[1.0] * 3, frozen_mode="frozen")

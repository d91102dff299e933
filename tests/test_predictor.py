import re

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

from vss.data import build_video_test_loader, group_by_video
from vss.data.datasets.synthetic import SYNTHETIC_CLASSES, SYNTHETIC_COLORS
from vss.data.datasets.vspw import register_vspw_layout
from vss.data.io import read_frame
from vss.data.synthetic import generate
from vss.engine import VideoPredictor, setup_cfg

from conftest import REPO

# Frames of 40x56 resized to a short side of 48: the test-time resize is not a no-op.
HEIGHT, WIDTH, MIN_SIZE_TEST = 40, 56, 48
NUM_CLASSES = 8


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A registered 2-video, 3-frame synthetic val split; returns its name."""
    root = tmp_path_factory.mktemp("synthetic")
    generate(root, train_videos=1, val_videos=2, frames=3, height=HEIGHT, width=WIDTH)
    name = "predictor_test_val"
    register_vspw_layout(name, str(root), "val", SYNTHETIC_CLASSES, SYNTHETIC_COLORS)
    return name


def _cfg(config, dataset, weights=""):
    return setup_cfg(str(REPO / "configs" / "synthetic" / config), [
        "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", weights, "INPUT.MIN_SIZE_TEST", MIN_SIZE_TEST,
        "DATASETS.TEST", (dataset,), "DATALOADER.NUM_WORKERS", 0,
    ])


def _evaluation_outputs(model, cfg, dataset):
    """{video_id: [sem_seg per frame]} as the evaluation computes them, frame by frame."""
    outputs = {}
    if hasattr(model, "reset"):  # a per-frame MaskFormer has no state to drop
        model.reset()
    with torch.no_grad():
        for batch in build_video_test_loader(cfg, dataset):
            (frame,) = batch
            outputs.setdefault(frame["video_id"], []).append(model(batch)[0]["sem_seg"])
    return outputs


@pytest.fixture(scope="module", params=["mask2former_tiny.yaml", "tv3s_tiny.yaml"])
def trained(request, dataset, tmp_path_factory):
    """(config name, cfg loading a random model's weights, evaluation outputs, BGR frames per video)."""
    cfg = _cfg(request.param, dataset)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    save_dir = tmp_path_factory.mktemp("weights")
    DetectionCheckpointer(model, save_dir=str(save_dir)).save("model")
    expected = _evaluation_outputs(model, cfg, dataset)
    videos = group_by_video(DatasetCatalog.get(dataset))
    frames = {v: [read_frame(r["file_name"], "BGR") for r in records] for v, records in videos.items()}
    assert list(expected) == list(frames) and len(frames) == 2
    return request.param, _cfg(request.param, dataset, str(save_dir / "model.pth")), expected, frames


def _max_diff(outputs, expected):
    assert len(outputs) == len(expected)
    return max((o["sem_seg"] - e).abs().max().item() for o, e in zip(outputs, expected))


def test_predictor_matches_evaluation(trained):
    _, cfg, expected, frames = trained
    torch.manual_seed(1)  # a different initialisation: the match needs the loaded weights
    predictor = VideoPredictor(cfg)
    for video, video_frames in frames.items():
        outputs = list(predictor.run(video_frames))
        assert outputs[0]["sem_seg"].shape == (NUM_CLASSES, HEIGHT, WIDTH)
        assert _max_diff(outputs, expected[video]) <= 1e-5
    # Frames need not match the dataset's size or the padding multiple.
    predictor.reset()
    odd = np.random.default_rng(0).integers(0, 256, (37, 61, 3), dtype=np.uint8)
    assert predictor(odd)["sem_seg"].shape == (NUM_CLASSES, 37, 61)


def test_reset_isolates_videos(trained):
    config, cfg, expected, frames = trained
    first, second = frames.values()
    predictor = VideoPredictor(cfg)
    for frame in first:
        predictor(frame)
    predictor.reset()
    if hasattr(predictor.model, "states"):
        assert len(predictor.model.states) == 0  # the first video's state is freed
    assert _max_diff([predictor(f) for f in second], list(expected.values())[1]) <= 1e-5

    # Without a reset the second video continues the first one.
    predictor.reset()
    continued = [predictor(f) for f in first + second][len(first):]
    diff = _max_diff(continued, list(expected.values())[1])
    if config.startswith("tv3s"):
        assert diff > 1e-3  # the scan state carried over
    else:
        assert diff <= 1e-5  # a per-frame model has no state


def test_bad_frames_raise(trained, dataset):
    _, cfg, _, frames = trained
    predictor = VideoPredictor(cfg)
    frame = frames[next(iter(frames))][0]
    bad = {
        "float32": frame.astype(np.float32),
        "grayscale": frame[:, :, 0],
        "RGBA": np.concatenate([frame, frame[:, :, :1]], axis=2),
        "CHW": np.ascontiguousarray(frame.transpose(2, 0, 1)),
        "empty": frame[:0],
    }
    for array in bad.values():
        with pytest.raises(ValueError, match=rf"HxWx3 uint8.*{re.escape(str(array.shape))}"):
            predictor(array)
    with pytest.raises(TypeError, match=r"HxWx3 uint8 numpy array.*Tensor"):
        predictor(torch.from_numpy(frame))
    # A rejected frame does not advance the video.
    assert predictor.frame_idx == 0


def test_half_needs_cuda(dataset):
    with pytest.raises(ValueError, match="half precision needs a CUDA device.*'cpu'"):
        VideoPredictor(_cfg("mask2former_tiny.yaml", dataset), half=True)


def test_labels_only_gives_the_argmax_of_the_scores(trained):
    _, cfg, _, frames = trained
    scores, labels = VideoPredictor(cfg), VideoPredictor(cfg, labels_only=True)
    for video_frames in frames.values():
        for full, only in zip(scores.run(video_frames), labels.run(video_frames)):
            assert set(only) == {"sem_seg_labels"} and only["sem_seg_labels"].shape == (HEIGHT, WIDTH)
            assert torch.equal(only["sem_seg_labels"], full["sem_seg"].argmax(0))

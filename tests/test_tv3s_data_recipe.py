"""The TV3S release's data recipe: resizes as mmseg 0.11 / mmcv compute them, and every TV3S
config's INPUT rows against the release's pipelines (local_configs/_base_/datasets/*.py).

Expected sizes are worked out by hand from mmcv's rescale_size (scale = min(long_box / long,
short_box / short), sides int(x * scale + 0.5)); pixels from OpenCV's resize, which mmcv calls.
"""
import cv2
import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data import transforms as T

from vss import add_vss_config
from vss.data.augment import AlignedResize, CV2ResizeTransform, PhotometricDistortion, RatioRangeResize, \
    build_augmentations, rescale_size
from vss.data.mappers import FrameMapper

from conftest import REPO


def sizes(tfm):
    tfms = tfm.transforms if isinstance(tfm, T.TransformList) else [tfm]
    return [(t.new_h, t.new_w) for t in tfms]


def image(h, w, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (h, w, 3)).astype(np.uint8)


def test_rescale_size_as_mmcv():
    assert rescale_size(480, 853, 853, 480) == (480, 853)
    assert rescale_size(480, 1280, 853, 480) == (320, 853)  # wider than 16:9: the long side caps
    assert rescale_size(500, 1200, 853, 480) == (355, 853)
    assert rescale_size(1200, 500, 853, 480) == (853, 355)  # the box is (long, short), not (w, h)


def test_ratio_range_resize_caps_wide_frames_by_the_ratio():
    # Ratio 1: VSPW's 480x853 unchanged, a 480x1280 frame capped at 853 wide.
    assert sizes(RatioRangeResize((853, 480), (1.0, 1.0)).get_transform(image(480, 1280))) == [(320, 853)]
    # Ratio 2: box (1706, 960); short-side resizing would give 960x2560.
    assert sizes(RatioRangeResize((853, 480), (2.0, 2.0)).get_transform(image(480, 1280))) == [(640, 1706)]
    short_side = T.ResizeShortestEdge((960,), 3840, "choice").get_transform(image(480, 1280))
    assert (short_side.new_h, short_side.new_w) == (960, 2560)
    # Ratio 0.5: box (426, 240) truncated, so 480x853 -> 240x426 (short-side 240 gives 240x427).
    assert sizes(RatioRangeResize((853, 480), (0.5, 0.5)).get_transform(image(480, 853))) == [(240, 426)]
    # Sampled: the ratio is mmseg's random_sample() * (max - min) + min.
    np.random.seed(3)
    got = sizes(RatioRangeResize((853, 480), (0.5, 2.0)).get_transform(image(480, 853)))
    np.random.seed(3)
    ratio = np.random.random_sample() * 1.5 + 0.5
    assert got == [rescale_size(480, 853, int(853 * ratio), int(480 * ratio))]
    with pytest.raises(ValueError, match="RATIO_RANGE_TRAIN"):
        RatioRangeResize((853, 480), (2.0, 0.5))


def test_cv2_resize_pixels_and_labels():
    img = image(30, 50)
    tfm = CV2ResizeTransform(30, 50, 45, 70)
    np.testing.assert_array_equal(tfm.apply_image(img), cv2.resize(img, (70, 45), interpolation=cv2.INTER_LINEAR))
    label = (np.arange(30 * 50).reshape(30, 50) % 7).astype(np.uint8)
    out = tfm.apply_segmentation(label)
    assert out.shape == (45, 70) and set(np.unique(out)) <= set(range(7))
    np.testing.assert_array_equal(out, cv2.resize(label, (70, 45), interpolation=cv2.INTER_NEAREST))
    coords = tfm.apply_coords(np.array([[50.0, 30.0]]))
    np.testing.assert_allclose(coords, [[70.0, 45.0]])


def test_aligned_test_resize_stretches_to_a_multiple_of_32():
    aligned = AlignedResize(480, 853, 32)
    assert sizes(aligned.get_transform(image(480, 853))) == [(480, 853), (480, 864)]
    assert sizes(aligned.get_transform(image(500, 1200))) == [(355, 853), (384, 864)]
    assert sizes(aligned.get_transform(image(1024, 2048))) == [(427, 853), (448, 864)]
    assert sizes(AlignedResize(512, 1024, 32).get_transform(image(1024, 2048))) == [(512, 1024), (512, 1024)]
    img = image(500, 1200)
    expected = cv2.resize(cv2.resize(img, (853, 355), interpolation=cv2.INTER_LINEAR), (864, 384),
                          interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(aligned.get_transform(img).apply_image(img), expected)
    with pytest.raises(ValueError, match="ALIGN_SIZE_TEST"):
        AlignedResize(480, 853, 0)


def cfg_of(path):
    cfg = get_cfg()
    add_vss_config(cfg)
    cfg.merge_from_file(str(REPO / path))
    return cfg


VSPW = sorted(str(p.relative_to(REPO)) for p in (REPO / "configs" / "vspw" / "tv3s").glob("*.yaml"))
CITYSCAPES = sorted(str(p.relative_to(REPO)) for p in (REPO / "configs" / "cityscapes" / "tv3s").glob("*.yaml"))


@pytest.mark.parametrize("path", VSPW + CITYSCAPES)
def test_tv3s_configs_carry_the_releases_data_recipe(path):
    cfg = cfg_of(path)
    i = cfg.INPUT
    city = path.startswith("configs/cityscapes")
    # O: local_configs/_base_/datasets/vspw_repeat2.py:7-32, cityscapes_1024x1024_repeat_clips.py:7-32
    box, crop = ((1024, 512), (512, 1024)) if city else ((853, 480), (480, 480))
    assert (i.RESIZE_TRAIN, tuple(i.SCALE_TRAIN), tuple(i.RATIO_RANGE_TRAIN)) == ("ratio_range", box, (0.5, 2.0))
    assert (i.RESIZE_TEST, i.MIN_SIZE_TEST, i.MAX_SIZE_TEST, i.ALIGN_SIZE_TEST) == ("aligned", box[1], box[0], 32)
    assert tuple(i.CROP.SIZE) == crop and i.CROP.SINGLE_CATEGORY_MAX_AREA == 0.75
    assert i.PAD_VALUE == "mean" and list(cfg.MODEL.PIXEL_MEAN) == [123.675, 116.28, 103.53]
    assert (i.PAD_TO_CROP, i.SIZE_DIVISIBILITY) == ((True, -1) if city else (False, 480))  # pad to the crop
    assert i.COLOR_AUG_SSD and i.VIDEO.COLOR_AUG_PER_FRAME
    assert i.VIDEO.CLIP_TARGETS == "full_context" and list(i.VIDEO.CLIP_OFFSETS) == [-9, -6, -3, 0]
    assert i.VIDEO.REVERSE_PROB == (0.0 if city else 0.5)  # O: utils/datasets/custom.py:544 / 1954-1957
    train, test = build_augmentations(cfg, True), build_augmentations(cfg, False)
    assert isinstance(train[0], RatioRangeResize) and train[0].scale == box
    assert [a.per_frame for a in train if isinstance(a, PhotometricDistortion)] == [True]
    assert len(test) == 1 and isinstance(test[0], AlignedResize)


def test_code_defaults_keep_the_earlier_pipeline():
    cfg = get_cfg()
    add_vss_config(cfg)
    i = cfg.INPUT
    assert (i.RESIZE_TRAIN, i.RESIZE_TEST, i.PAD_VALUE, i.PAD_TO_CROP) == ("shortest_edge", "shortest_edge", "black",
                                                                          False)
    assert (i.VIDEO.CLIP_TARGETS, i.VIDEO.COLOR_AUG_PER_FRAME) == ("all", False)
    cfg.INPUT.COLOR_AUG_SSD = True
    train, test = build_augmentations(cfg, True), build_augmentations(cfg, False)
    assert type(train[0]) is T.ResizeShortestEdge and type(test[0]) is T.ResizeShortestEdge
    assert [a.per_frame for a in train if isinstance(a, PhotometricDistortion)] == [False]
    cfg.INPUT.RESIZE_TEST = "pad"
    with pytest.raises(ValueError, match="INPUT.RESIZE_TEST must be one of"):
        build_augmentations(cfg, False)


def test_test_mapper_keeps_the_frame_size_for_scoring(tmp_path):
    cfg = cfg_of("configs/vspw/tv3s/MiT-B1.yaml")
    path = tmp_path / "00000.png"
    frame = image(500, 1200)
    cv2.imwrite(str(path), frame)
    record = {"file_name": str(path), "height": 500, "width": 1200, "video_id": "v", "frame_idx": 0}
    out = FrameMapper(cfg, is_train=False)(record)
    assert out["image"].shape == (3, 384, 864)  # stretched, not padded
    assert (out["height"], out["width"]) == (500, 1200)  # predictions are resized back to this

"""Frame / pair / clip mappers and the shared augmentation, checked on frame content.

Frames are PNGs whose pixels encode their own coordinates (R = x, G = y) and
their frame index (B = 10 * k + 5), so an augmented output can be decoded back
to the crop window, the flip and the frame it came from.
"""
import logging
import os
import uuid

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.data import transforms as T
from PIL import Image

import vss  # noqa: F401  (registers the built-in datasets)
from vss import add_vss_config
from vss.data.augment import PhotometricDistortion, PhotometricTransform, augment_frames
from vss.modeling.tv3s.clips import release_test_clip
from vss.data.datasets import register_vspw_layout
from vss.data.mappers import ClipMapper, FrameMapper, PairMapper, mask2former_targets
from vss.data.video import group_by_video

H, W = 40, 64
NUM_CLASSES = 8


def coord_frame(k, h=H, w=W):
    ys, xs = np.mgrid[:h, :w]
    return np.stack([xs, ys, np.full_like(xs, 10 * k + 5)], axis=-1).astype(np.uint8)


def coord_label(h=H, w=W):
    """Train id of pixel (y, x): which of the 4x2 blocks of 16x20 pixels it is in."""
    ys, xs = np.mgrid[:h, :w]
    return (xs // 16 + 4 * (ys // 20)).astype(np.uint8)


def make_dataset(root, frames, labels):
    """frames: {video: [HxWx3 or HxW or HxWx4 uint8]}; labels: {video: {k: train-id map}}.

    Registers the folder (VSPW layout, label offset 1) under a fresh name and
    returns (records, videos).
    """
    root = str(root)
    with open(os.path.join(root, "train.txt"), "w") as f:
        f.write("\n".join(frames) + "\n")
    for video, imgs in frames.items():
        os.makedirs(os.path.join(root, "data", video, "origin"))
        os.makedirs(os.path.join(root, "data", video, "mask"))
        for k, img in enumerate(imgs):
            Image.fromarray(img).save(os.path.join(root, "data", video, "origin", f"{k:05d}.png"))
        for k, label in labels.get(video, {}).items():
            raw = np.where(label == 255, 255, label.astype(np.int64) + 1).astype(np.uint8)
            Image.fromarray(raw).save(os.path.join(root, "data", video, "mask", f"{k:05d}.png"))
    name = f"test_mappers_{uuid.uuid4().hex[:8]}"
    register_vspw_layout(name, root, "train", [f"c{i}" for i in range(NUM_CLASSES)],
                         [(i, i, i) for i in range(NUM_CLASSES)])
    records = DatasetCatalog.get(name)
    return name, records, group_by_video(records)


def make_cfg(name, **input_opts):
    cfg = get_cfg()
    add_vss_config(cfg)
    cfg.DATASETS.TRAIN = (name,)
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.MIN_SIZE_TRAIN = (H,)
    cfg.INPUT.MAX_SIZE_TRAIN = 1000
    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"
    cfg.INPUT.MIN_SIZE_TEST = 0
    cfg.INPUT.CROP.ENABLED = False
    cfg.INPUT.RANDOM_FLIP = "none"
    for key, value in input_opts.items():
        node, attr = cfg.INPUT, key
        if "." in key:
            sub, attr = key.split(".")
            node = getattr(cfg.INPUT, sub)
        setattr(node, attr, value)
    return cfg


def kwargs_mapper(cls, augmentations, **extra):
    return cls(augmentations=augmentations, image_format="RGB", num_classes=NUM_CLASSES,
               label_offset=1, **extra)


def decode_window(image):
    """(y0, x0, flipped) of an augmented coordinate frame (CxHxW), checking it is one rigid window."""
    xs, ys = image[0].astype(int), image[1].astype(int)
    h, w = xs.shape
    y0, x_first = ys[0, 0], xs[0, 0]
    flipped = w > 1 and xs[0, 1] < x_first
    cols = x_first - np.arange(w) if flipped else x_first + np.arange(w)
    np.testing.assert_array_equal(xs, np.broadcast_to(cols, (h, w)))
    np.testing.assert_array_equal(ys, np.broadcast_to((y0 + np.arange(h))[:, None], (h, w)))
    return int(y0), int(cols.min()), bool(flipped)


@pytest.fixture
def coord_video(tmp_path):
    frames = {"vid": [coord_frame(k) for k in range(12)]}
    labels = {"vid": {k: coord_label() for k in range(12)}}
    return make_dataset(tmp_path, frames, labels)


def test_pair_shares_crop_and_flip_on_content(coord_video):
    name, records, videos = coord_video
    cfg = make_cfg(name, **{"CROP.ENABLED": True, "CROP.TYPE": "absolute", "CROP.SIZE": [24, 32],
                            "RANDOM_FLIP": "horizontal"})
    mapper = PairMapper(cfg, videos=videos)
    np.random.seed(0)
    windows = set()
    for _ in range(30):
        out = mapper(records[11])
        image, key = out["image"].numpy(), out["key_image"].numpy()
        assert image.shape == key.shape == (3, 24, 32) and image.dtype == np.uint8
        window = decode_window(image)
        assert decode_window(key) == window
        windows.add(window)
        # Each image still comes from its own frame.
        assert (image[2] == 10 * 11 + 5).all()
        assert (key[2] == 10 * out["key_frame_idx"] + 5).all()
        # The label moved with the image: it equals the label of the decoded coordinates.
        expected = image[0].astype(int) // 16 + 4 * (image[1].astype(int) // 20)
        np.testing.assert_array_equal(out["sem_seg"].numpy(), expected)
        assert out["sem_seg"].dtype == torch.long
    assert {w[2] for w in windows} == {True, False}
    assert len({w[:2] for w in windows}) > 5


def test_clip_shares_random_resize(coord_video):
    name, records, videos = coord_video
    cfg = make_cfg(name, MIN_SIZE_TRAIN=(16, 48), MIN_SIZE_TRAIN_SAMPLING="range", RANDOM_FLIP="horizontal")
    cfg.INPUT.VIDEO.CLIP_OFFSETS = [-6, -3, 0]
    mapper = ClipMapper(cfg, videos=videos)
    np.random.seed(1)
    sizes = set()
    for _ in range(10):
        out = mapper(records[9])
        images = [im.numpy() for im in out["images"]]
        short = min(images[0].shape[1:])
        assert 16 <= short <= 48
        sizes.add(images[0].shape)
        for k, image, sem_seg in zip(out["frame_indices"], images, out["sem_segs"]):
            # Same resize and flip: identical coordinate channels in every frame.
            np.testing.assert_array_equal(image[:2], images[-1][:2])
            assert (image[2] == 10 * k + 5).all()
            assert sem_seg.shape == image.shape[1:]
            # Nearest-neighbour labels: only values of the original map, no blends.
            assert set(sem_seg.unique().tolist()) <= set(range(NUM_CLASSES))
        assert out["image"] is out["images"][-1]
    assert len(sizes) > 3


def test_crop_constraint_is_judged_on_the_target_label(tmp_path):
    stripes = ((np.arange(W) // 4) % 2).astype(np.uint8)
    target = np.broadcast_to(np.where(np.arange(W) < 48, stripes, 2), (H, W)).astype(np.uint8)
    context = np.full((H, W), 2, np.uint8)
    frames = {"vid": [coord_frame(k) for k in range(3)]}
    _, records, videos = make_dataset(tmp_path, frames, {"vid": {0: context, 1: context, 2: target}})

    def crop_starts(max_area):
        crop = T.RandomCrop_CategoryAreaConstraint("absolute", (H, 16), max_area, 255)
        mapper = kwargs_mapper(ClipMapper, [crop], videos=videos, offsets=[-2, -1, 0])
        np.random.seed(3)
        starts = []
        for _ in range(60):
            out = mapper(records[2])
            windows = {decode_window(im.numpy()) for im in out["images"]}
            assert len(windows) == 1
            starts.append(windows.pop()[1])
        return starts

    # A window starting at x >= 44 is >= 75% class 2 on the target; context frames are all class 2,
    # so a draw judged on them would find no valid window and keep a random one.
    assert max(crop_starts(1.0)) >= 44  # this seed does reach the bad windows without the constraint
    assert max(crop_starts(0.75)) < 44


def test_color_distortion_is_the_same_on_every_frame(tmp_path):
    rng = np.random.RandomState(0)
    img = rng.randint(0, 256, (16, 16, 3)).astype(np.uint8)
    _, records, videos = make_dataset(tmp_path, {"vid": [img, img, img]},
                                      {"vid": {2: np.zeros((16, 16), np.uint8)}})
    mapper = kwargs_mapper(PairMapper, [PhotometricDistortion("RGB")], videos=videos, max_gap=2)
    np.random.seed(0)
    changed = 0
    for _ in range(10):
        out = mapper(records[2])
        np.testing.assert_array_equal(out["key_image"].numpy(), out["image"].numpy())
        changed += not np.array_equal(out["image"].numpy().transpose(1, 2, 0), img)
    assert changed >= 5


def test_photometric_transform_values():
    px = np.array([[[10, 100, 250]]], np.uint8)
    np.testing.assert_array_equal(PhotometricTransform(brightness=20).apply_image(px), [[[30, 120, 255]]])
    np.testing.assert_array_equal(PhotometricTransform(contrast=2.0).apply_image(px), [[[20, 200, 255]]])
    gray = PhotometricTransform(saturation=0.0).apply_image(px)
    assert gray[0, 0, 0] == gray[0, 0, 1] == gray[0, 0, 2]
    # OpenCV hue is in 0..179: +60 turns red into green, whatever the channel order.
    red_rgb, red_bgr = np.array([[[255, 0, 0]]], np.uint8), np.array([[[0, 0, 255]]], np.uint8)
    np.testing.assert_array_equal(PhotometricTransform(hue=60).apply_image(red_rgb), [[[0, 255, 0]]])
    np.testing.assert_array_equal(PhotometricTransform(hue=60, img_format="BGR").apply_image(red_bgr),
                                  [[[0, 255, 0]]])
    # Brightness comes first, clipped before contrast: (10, 100, 250) - 60 = (0, 40, 190), x2.
    np.testing.assert_array_equal(PhotometricTransform(brightness=-60, contrast=2.0).apply_image(px),
                                  [[[0, 80, 255]]])
    # Contrast before or after the HSV steps gives different distortions.
    orders = [PhotometricTransform(brightness=-60, contrast=2.0, hue=30, contrast_first=first).apply_image(px)
              for first in (True, False)]
    assert not np.array_equal(*orders)
    label = np.array([[1, 255]], np.uint8)
    assert PhotometricTransform(brightness=30).apply_segmentation(label) is label


def test_photometric_distortion_draws_once():
    img = np.random.RandomState(1).randint(0, 256, (8, 8, 3)).astype(np.uint8)
    np.random.seed(5)
    tfm = PhotometricDistortion("RGB", prob=1.0).get_transform(img)
    assert tfm.brightness != 0 and tfm.contrast != 1.0 and tfm.saturation != 1.0 and tfm.hue != 0
    np.testing.assert_array_equal(tfm.apply_image(img), tfm.apply_image(img))
    assert not np.array_equal(tfm.apply_image(img), img)
    identity = PhotometricDistortion("RGB", prob=0.0).get_transform(img)
    np.testing.assert_array_equal(identity.apply_image(img), img)
    with pytest.raises(ValueError, match="'YUV'"):
        PhotometricTransform(img_format="YUV")


def test_augment_frames_rejects_mixed_sizes():
    with pytest.raises(ValueError, match="share one size"):
        augment_frames([], [np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5, 3), np.uint8)], [None, None], 0)


def test_frame_mapper_mask2former_targets(tmp_path):
    label = np.full((H, W), 255, np.uint8)
    label[:10] = 3
    label[10:20, :5] = 0
    name, records, _ = make_dataset(tmp_path, {"vid": [coord_frame(0)]}, {"vid": {0: label}})
    out = FrameMapper(make_cfg(name), is_train=True)(records[0])
    np.testing.assert_array_equal(out["image"].numpy().transpose(1, 2, 0), coord_frame(0))
    np.testing.assert_array_equal(out["sem_seg"].numpy(), label)
    inst = out["instances"]
    assert inst.gt_classes.dtype == torch.int64 and inst.gt_classes.tolist() == [0, 3]
    assert inst.gt_masks.shape == (2, H, W) and inst.image_size == (H, W)
    for c, mask in zip(inst.gt_classes, inst.gt_masks):
        assert torch.equal(mask, out["sem_seg"] == c)
    assert (out["height"], out["width"], out["video_id"], out["frame_idx"]) == (H, W, "vid", 0)
    assert out["file_name"] == records[0]["file_name"]
    empty = mask2former_targets(torch.full((3, 4), 255, dtype=torch.long))
    assert empty.gt_classes.numel() == 0 and empty.gt_masks.shape == (0, 3, 4)


def test_frame_mapper_pads_to_size_divisibility(coord_video):
    name, records, _ = coord_video
    out = FrameMapper(make_cfg(name, SIZE_DIVISIBILITY=32), is_train=True)(records[0])
    image, sem_seg = out["image"].numpy(), out["sem_seg"].numpy()
    assert image.shape == (3, 64, 64) and sem_seg.shape == (64, 64)
    np.testing.assert_array_equal(image[:, :H].transpose(1, 2, 0), coord_frame(0))
    assert (image[:, H:] == 0).all() and (sem_seg[H:] == 255).all()
    np.testing.assert_array_equal(sem_seg[:H], coord_label())
    assert out["instances"].image_size == (64, 64)


def test_frame_mapper_test_mode(coord_video):
    name, records, _ = coord_video
    record = dict(records[4], sem_seg_file_name="/nonexistent/label.png")  # test mode never reads labels
    cfg = make_cfg(name)
    cfg.INPUT.MIN_SIZE_TEST = 20
    out = FrameMapper(cfg, is_train=False)(record)
    assert out["image"].shape == (3, 20, 32)
    assert (out["height"], out["width"]) == (H, W)
    assert {k: out[k] for k in record} == record
    assert "sem_seg" not in out and "instances" not in out
    cfg.INPUT.MIN_SIZE_TEST = 0
    out = FrameMapper(cfg, is_train=False)(record)
    np.testing.assert_array_equal(out["image"].numpy().transpose(1, 2, 0), coord_frame(4))


@pytest.fixture
def small_video(tmp_path):
    """15 frames of 8x8; B = 10k+5 everywhere; even frames labelled with class (k // 2) % 8."""
    frames = {"vid": [np.full((8, 8, 3), 10 * k + 5, np.uint8) for k in range(15)]}
    labels = {"vid": {k: np.full((8, 8), (k // 2) % NUM_CLASSES, np.uint8) for k in range(0, 15, 2)}}
    return make_dataset(tmp_path, frames, labels)


def test_pair_gap_bounds(small_video):
    _, records, videos = small_video
    mapper = kwargs_mapper(PairMapper, [], videos=videos, max_gap=10)
    np.random.seed(0)
    for t, max_gap in [(12, 10), (2, 2)]:
        gaps = set()
        for _ in range(150):
            out = mapper(records[t])
            gap = t - out["key_frame_idx"]
            gaps.add(gap)
            assert (out["key_image"] == 10 * out["key_frame_idx"] + 5).all()
            assert (out["image"] == 10 * t + 5).all() and out["frame_idx"] == t
        assert gaps == set(range(1, max_gap + 1))
    with pytest.raises(ValueError, match="00000.png.*'vid'.*no earlier frame within .*PAIR_MAX_GAP=10"):
        mapper(records[0])


def release_pair_probabilities(length, max_gap):
    """P(target, key) of the MPVSS release's draw on a fully labelled video of `length` frames:
    a frame uniformly, a partner uniformly among the frames at most max_gap away, the later
    one the target (O: mask_former_video_semantic_dataset_mapper.py:137-145)."""
    probs = {}
    for cur in range(length):
        near = [f for f in range(max(0, cur - max_gap), min(length, cur + max_gap + 1)) if f != cur]
        for other in near:
            pair = (max(cur, other), min(cur, other))
            probs[pair] = probs.get(pair, 0.0) + 1.0 / length / len(near)
    return probs


def test_pair_window_draw_is_the_releases(tmp_path):
    frames = {"v": [np.full((4, 4, 3), 10 * k + 5, np.uint8) for k in range(14)]}
    labels = {"v": {k: np.full((4, 4), k % NUM_CLASSES, np.uint8) for k in range(14)}}
    _, records, videos = make_dataset(tmp_path, frames, labels)
    mapper = kwargs_mapper(PairMapper, [], videos=videos, max_gap=4, draw="window")
    np.random.seed(0)
    n = 6000
    counts = {}
    for _ in range(n):
        out = mapper(records[7])  # the record only names its video
        pair = (out["frame_idx"], out["key_frame_idx"])
        counts[pair] = counts.get(pair, 0) + 1
        assert (out["image"] == 10 * pair[0] + 5).all() and (out["key_image"] == 10 * pair[1] + 5).all()
        assert (out["sem_seg"] == pair[0] % NUM_CLASSES).all()
    expected = release_pair_probabilities(14, 4)
    assert set(counts) == set(expected)  # every pair the release draws, and no other
    for pair, p in expected.items():
        assert abs(counts[pair] / n - p) < 4 * np.sqrt(p * (1 - p) / n) + 1e-3, pair
    # near the ends the draw is not "target"'s: frame 0 is never a target, frame 1's key is always 0
    assert all(t > 0 for t, _ in counts) and {k for t, k in counts if t == 1} == {0}


def test_pair_window_draw_needs_two_labelled_frames_within_the_gap(small_video):
    _, records, videos = small_video  # even frames labelled: 2 apart
    with pytest.raises(ValueError, match="PAIR_DRAW 'window': 1 training video.*PAIR_MAX_GAP=1: vid"):
        kwargs_mapper(PairMapper, [], videos=videos, max_gap=1, draw="window")
    mapper = kwargs_mapper(PairMapper, [], videos=videos, max_gap=2, draw="window")
    np.random.seed(1)
    for _ in range(50):
        out = mapper(records[0])
        assert out["frame_idx"] % 2 == 0 and out["frame_idx"] - out["key_frame_idx"] == 2
    with pytest.raises(ValueError, match="PAIR_DRAW must be one of"):
        kwargs_mapper(PairMapper, [], videos=videos, max_gap=2, draw="nearest")


@pytest.fixture
def gappy_video(small_video):
    """small_video with frames 5..8 deleted before loading: frame_idx 0-4 and 9-14."""
    name, records, _ = small_video
    for k in range(5, 9):
        os.remove(records[k]["file_name"])
    records = DatasetCatalog.get(name)
    return records, group_by_video(records)


def test_pair_key_frames_skip_missing_frames(gappy_video):
    records, videos = gappy_video
    assert [r["frame_idx"] for r in records] == [0, 1, 2, 3, 4] + list(range(9, 15))
    target = records[6]  # frame_idx 10: frames 6-8 within the gap of 4 are missing
    mapper = kwargs_mapper(PairMapper, [], videos=videos, max_gap=4)
    np.random.seed(0)
    keys = {mapper(target)["key_frame_idx"] for _ in range(60)}
    assert keys == {9}
    mapper = kwargs_mapper(PairMapper, [], videos=videos, max_gap=6)
    keys = set()
    for _ in range(100):
        out = mapper(target)
        keys.add(out["key_frame_idx"])
        assert (out["key_image"] == 10 * out["key_frame_idx"] + 5).all()  # the key image is that frame's
    assert keys == {4, 9}
    with pytest.raises(ValueError, match="00009.png.*no earlier frame within INPUT.VIDEO.PAIR_MAX_GAP=3"):
        kwargs_mapper(PairMapper, [], videos=videos, max_gap=3)(records[5])


def test_clip_replaces_missing_frames_as_streaming_inference_does(gappy_video, caplog):
    records, videos = gappy_video
    forward = kwargs_mapper(ClipMapper, [], videos=videos, offsets=[-7, -3, 0])
    with caplog.at_level(logging.DEBUG, logger="vss.data.mappers"):
        out = forward(records[8])  # frame_idx 12: 5 and 9 wanted, 5 is missing
    # The latest frame at or before 5 is 4, the frame the streaming TV3S head would use.
    assert out["frame_indices"] == [4, 9, 12]
    assert [int(im[0, 0, 0]) for im in out["images"]] == [45, 95, 125]
    assert "missing" in caplog.text and "[5, 9, 12]" in caplog.text
    assert [r.levelno for r in caplog.records if r.name == "vss.data.mappers"] == [logging.WARNING]
    # Played backwards, the mirror image: the earliest frame at or after the wanted one.
    backward = kwargs_mapper(ClipMapper, [], videos=videos, offsets=[-7, -3, 0], reverse_prob=1.0)
    assert backward(records[2])["frame_indices"] == [9, 9, 2]  # 9 and 5 wanted, 5 missing


def test_clip_offsets_reversal_and_clamping(small_video, caplog):
    _, records, videos = small_video

    def clip(t, reverse_prob):
        mapper = kwargs_mapper(ClipMapper, [], videos=videos, offsets=[-9, -6, -3, 0],
                               reverse_prob=reverse_prob)
        return mapper, mapper(records[t])

    _, out = clip(10, 0.0)
    assert out["frame_indices"] == [1, 4, 7, 10]
    for k, image, sem_seg in zip(out["frame_indices"], out["images"], out["sem_segs"]):
        assert (image == 10 * k + 5).all()
        # Odd frames are unlabelled: an all-ignore map.
        assert (sem_seg == ((k // 2) % NUM_CLASSES if k % 2 == 0 else 255)).all()
        assert sem_seg.dtype == torch.long
    assert torch.equal(out["sem_seg"], out["sem_segs"][-1]) and out["frame_idx"] == 10
    assert out["instances"].gt_classes.tolist() == [5]

    with caplog.at_level(logging.DEBUG, logger="vss.data.mappers"):
        mapper, out = clip(4, 0.0)
        assert out["frame_indices"] == [0, 0, 1, 4]  # -5 and -2 clamped to the first frame
        mapper(records[4])
        mapper(records[2])
    # clamping at the ends is the documented meaning of CLIP_TARGETS "all": nothing logged
    assert not [r for r in caplog.records if r.name == "vss.data.mappers"]

    _, out = clip(4, 1.0)
    assert out["frame_indices"] == [13, 10, 7, 4]  # played backwards, target still last
    assert [int(im[0, 0, 0]) for im in out["images"]] == [135, 105, 75, 45]
    _, out = clip(12, 1.0)
    assert out["frame_indices"] == [14, 14, 14, 12]  # 21, 18, 15 clamped to the last frame

    mapper, _ = clip(10, 0.5)
    np.random.seed(0)
    orders = {tuple(mapper(records[10])["frame_indices"]) for _ in range(30)}
    assert orders == {(1, 4, 7, 10), (14, 14, 13, 10)}


def test_clip_offsets_must_end_with_target(small_video):
    _, _, videos = small_video
    for offsets in ([-3, 0, 3], [0, -3, 0], [], [-3, -9, -6, 0], [-3, -3, 0]):
        with pytest.raises(ValueError, match="CLIP_OFFSETS"):
            kwargs_mapper(ClipMapper, [], videos=videos, offsets=offsets)
    with pytest.raises(ValueError, match="REVERSE_PROB"):
        kwargs_mapper(ClipMapper, [], videos=videos, offsets=[0], reverse_prob=1.5)


def test_video_mappers_need_target_in_index_and_labelled(small_video):
    _, records, videos = small_video
    mapper = kwargs_mapper(PairMapper, [], videos=videos, max_gap=3)
    with pytest.raises(ValueError, match="not in the mapper's video index"):
        mapper(dict(records[4], video_id="other"))
    with pytest.raises(ValueError, match="00003.png.*no label"):
        mapper(records[3])
    with pytest.raises(ValueError, match="test loading is per frame"):
        PairMapper(make_cfg("x"), is_train=False, videos=videos)


def test_missing_and_unreadable_frames(coord_video):
    name, records, _ = coord_video
    mapper = FrameMapper(make_cfg(name), is_train=True)
    os.remove(records[1]["file_name"])
    with pytest.raises(FileNotFoundError, match="00001.png"):
        mapper(records[1])
    with open(records[2]["file_name"], "wb") as f:
        f.write(b"not an image")
    with pytest.raises(ValueError, match="00002.png.*not a readable image"):
        mapper(records[2])


def test_size_mismatches_name_both_files(tmp_path):
    frames = {"vid": [coord_frame(0), coord_frame(1, h=H + 2)]}
    labels = {"vid": {0: coord_label(h=H - 4)}}
    name, records, _ = make_dataset(tmp_path, frames, labels)
    mapper = FrameMapper(make_cfg(name), is_train=True)
    with pytest.raises(ValueError, match=r"mask/00000.png is 36x64 but frame .*origin/00000.png is 40x64"):
        mapper(records[0])
    with pytest.raises(ValueError, match=r"origin/00001.png is 42x64 but its record says 40x64"):
        FrameMapper(make_cfg(name), is_train=False)(records[1])


def test_label_values_out_of_range(tmp_path):
    label = np.zeros((H, W), np.uint8)
    label[0, 0] = 19  # raw 20 with 8 classes
    name, records, _ = make_dataset(tmp_path, {"vid": [coord_frame(0)]}, {"vid": {0: label}})
    with pytest.raises(ValueError, match=r"00000.png has values \[20\] outside the class range"):
        FrameMapper(make_cfg(name), is_train=True)(records[0])


def test_grayscale_and_rgba_frames_give_three_channels(tmp_path):
    gray = np.full((H, W), 77, np.uint8)
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[...] = (10, 20, 30, 128)
    labels = {"vid": {0: coord_label(), 1: coord_label()}}
    name, records, _ = make_dataset(tmp_path, {"vid": [gray, rgba]}, labels)
    for fmt, record, expected in [("RGB", records[0], (77, 77, 77)), ("RGB", records[1], (10, 20, 30)),
                                  ("BGR", records[1], (30, 20, 10))]:
        cfg = make_cfg(name, FORMAT=fmt)
        for is_train in (True, False):
            image = FrameMapper(cfg, is_train=is_train)(record)["image"]
            assert image.shape == (3, H, W)
            assert image[:, 0, 0].tolist() == list(expected) and (image == image[:, :1, :1]).all()


def test_training_mapper_needs_class_metadata():
    cfg = make_cfg("test_mappers_never_registered")
    with pytest.raises(ValueError, match="'test_mappers_never_registered' has no stuff_classes"):
        FrameMapper(cfg, is_train=True)


def test_clip_frames_agree_with_the_tv3s_clip_test(gappy_video):
    # One rule (vss.modeling.tv3s.clips): once a frame has the full reach of the offsets behind it, the
    # training clip is the clip the TV3S clip test feeds the scan, gaps included.
    records, videos = gappy_video
    offsets = [-9, -6, -3, 0]
    mapper = kwargs_mapper(ClipMapper, [], videos=videos, offsets=offsets)
    frames = [r["frame_idx"] for r in records]
    compared = 0
    for record in records:
        t = record["frame_idx"]
        if t < 9:
            continue
        compared += 1
        _, indices = mapper.draw_clip(record)
        assert indices == release_test_clip(t, offsets, frames, first=0)
    assert compared == 6


# ---- the TV3S release's clip targets (INPUT.VIDEO.CLIP_TARGETS "full_context") ----------------

def release_training_clips(n):
    """Every clip the release's VSPW training draws from an n-frame video (all frames labelled):
    targets 9..n-1 of the list in play direction, context t-9, t-6, t-3 of that list
    (O: utils/datasets/custom.py:1954-1963), in original frame numbers."""
    clips = set()
    for order in (list(range(n)), list(range(n))[::-1]):
        for t in range(9, n):
            clips.add(tuple(order[t + d] for d in (-9, -6, -3, 0)))
    return clips


@pytest.fixture
def labelled_video(tmp_path):
    """15 frames of 8x8, every one labelled; B = 10k+5."""
    frames = {"vid": [np.full((8, 8, 3), 10 * k + 5, np.uint8) for k in range(15)]}
    labels = {"vid": {k: np.full((8, 8), k % NUM_CLASSES, np.uint8) for k in range(15)}}
    return make_dataset(tmp_path, frames, labels)


def test_full_context_targets_are_the_releases(labelled_video):
    _, records, videos = labelled_video
    mapper = kwargs_mapper(ClipMapper, [], videos=videos, offsets=[-9, -6, -3, 0], reverse_prob=0.5,
                           targets="full_context")
    np.random.seed(0)
    drawn, targets = [], []
    for i in range(400):
        out = mapper(records[i % 15])  # the record only names the video
        indices = tuple(out["frame_indices"])
        drawn.append(indices)
        targets.append(out["frame_idx"])
        assert out["frame_idx"] == indices[-1] and out["file_name"] == records[indices[-1]]["file_name"]
        for k, image, sem_seg in zip(indices, out["images"], out["sem_segs"]):
            assert (image == 10 * k + 5).all() and (sem_seg == k % NUM_CLASSES).all()
    # Exactly the release's 12 clips, none clamped or repeated, each direction about half the time.
    assert set(drawn) == release_training_clips(15)
    assert all(len(set(c)) == 4 for c in drawn)
    forward = sum(c[0] < c[-1] for c in drawn)
    assert 160 < forward < 240
    # Targets: 9..14 forwards, 0..5 backwards; frames 6..8 are never a target.
    assert set(targets) == set(range(6)) | set(range(9, 15))


def test_all_targets_keeps_the_record_and_clamps(labelled_video):
    _, records, videos = labelled_video
    mapper = kwargs_mapper(ClipMapper, [], videos=videos, offsets=[-9, -6, -3, 0])
    out = mapper(records[4])
    assert out["frame_indices"] == [0, 0, 1, 4] and out["frame_idx"] == 4


def test_full_context_direction_without_targets_gives_way(tmp_path):
    # Only frames 0..3 are labelled: forwards none has 9 frames before it, so every clip plays backwards.
    frames = {"vid": [np.full((8, 8, 3), 10 * k + 5, np.uint8) for k in range(15)]}
    labels = {"vid": {k: np.zeros((8, 8), np.uint8) for k in range(4)}}
    _, records, videos = make_dataset(tmp_path, frames, labels)
    mapper = kwargs_mapper(ClipMapper, [], videos=videos, offsets=[-9, -6, -3, 0], reverse_prob=0.5,
                           targets="full_context")
    np.random.seed(1)
    clips = {tuple(mapper(records[0])["frame_indices"]) for _ in range(60)}
    assert clips == {(t + 9, t + 6, t + 3, t) for t in range(4)}
    with pytest.raises(ValueError, match=r"CLIP_TARGETS 'full_context': 1 training video\(s\).*vid"):
        kwargs_mapper(ClipMapper, [], videos=videos, offsets=[-9, -6, -3, 0], reverse_prob=0.0,
                      targets="full_context")
    with pytest.raises(ValueError, match="CLIP_TARGETS must be one of"):
        kwargs_mapper(ClipMapper, [], videos=videos, offsets=[0], targets="every")


def test_full_context_on_a_cityscapes_snippet(tmp_path):
    # 30 frames, only the 20th (frame 19) labelled, never reversed: the release's one clip.
    frames = {"seq": [np.full((8, 8, 3), k, np.uint8) for k in range(30)]}
    _, records, videos = make_dataset(tmp_path, frames, {"seq": {19: np.zeros((8, 8), np.uint8)}})
    mapper = kwargs_mapper(ClipMapper, [], videos=videos, offsets=[-9, -6, -3, 0], reverse_prob=0.0,
                           targets="full_context")
    np.random.seed(0)
    assert {tuple(mapper(records[19])["frame_indices"]) for _ in range(10)} == {(10, 13, 16, 19)}


# ---- per-frame colour distortion, pad value and pad size ---------------------------------------

def test_color_distortion_per_frame_values(tmp_path):
    img = np.random.RandomState(0).randint(0, 256, (16, 16, 3)).astype(np.uint8)
    labels = [np.zeros((16, 16), np.uint8)] * 3
    per_frame = PhotometricDistortion("RGB", prob=1.0, per_frame=True)
    np.random.seed(7)
    out, _, tfms = augment_frames([per_frame], [img] * 3, labels, anchor=2)
    # The anchor draws first, then each other frame in order.
    np.random.seed(7)
    anchor = per_frame.get_transform(img)
    expected = [per_frame.get_transform(img).apply_image(img) for _ in range(2)] + [anchor.apply_image(img)]
    for got, want in zip(out, expected):
        np.testing.assert_array_equal(got, want)
    assert not np.array_equal(out[0], out[1]) and not np.array_equal(out[1], out[2])
    assert tfms.transforms[0].brightness == anchor.brightness
    # One draw shared by the whole sample without per_frame (the default).
    shared = PhotometricDistortion("RGB", prob=1.0)
    out, _, _ = augment_frames([shared], [img] * 3, labels, anchor=2)
    assert np.array_equal(out[0], out[1]) and np.array_equal(out[1], out[2])


def test_color_aug_per_frame_key_keeps_geometry_shared(coord_video):
    name, records, videos = coord_video
    cfg = make_cfg(name, COLOR_AUG_SSD=True, RANDOM_FLIP="horizontal",
                   **{"CROP.ENABLED": True, "CROP.TYPE": "absolute", "CROP.SIZE": [24, 32],
                      "VIDEO.COLOR_AUG_PER_FRAME": True, "VIDEO.CLIP_OFFSETS": [-2, -1, 0]})
    mapper = ClipMapper(cfg, videos=videos)
    assert [a.per_frame for a in mapper.augmentations if isinstance(a, PhotometricDistortion)] == [True]
    np.random.seed(3)
    differ = 0
    for _ in range(20):
        out = mapper(records[11])
        # The label follows one crop and flip for every frame.
        assert all(torch.equal(s, out["sem_segs"][-1]) for s in out["sem_segs"])
        # Identical coordinate content but separate colour draws: channel 0 differs between frames.
        differ += not torch.equal(out["images"][0][0], out["images"][1][0])
    assert differ >= 10


def test_pad_with_the_mean_pixel_is_zero_after_normalisation(coord_video):
    name, records, _ = coord_video
    cfg = make_cfg(name, SIZE_DIVISIBILITY=32, PAD_VALUE="mean")
    cfg.MODEL.PIXEL_MEAN = [123.675, 116.28, 103.53]
    out = FrameMapper(cfg, is_train=True)(records[0])
    image, sem_seg = out["image"], out["sem_seg"]
    assert image.dtype == torch.float32 and image.shape == (3, 64, 64)
    np.testing.assert_array_equal(image[:, :H].numpy().transpose(1, 2, 0), coord_frame(0))
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN)[:, None, None]
    normalised = (image - mean) / torch.tensor(cfg.MODEL.PIXEL_STD)[:, None, None]
    assert (normalised[:, H:] == 0).all()  # exactly, as mmseg's Pad after Normalize
    assert (sem_seg[H:] == 255).all()
    with pytest.raises(ValueError, match="INPUT.PAD_VALUE must be one of"):
        FrameMapper(make_cfg(name, PAD_VALUE="grey"), is_train=True)


def test_pad_to_crop_size(coord_video):
    name, records, _ = coord_video
    cfg = make_cfg(name, PAD_TO_CROP=True, MIN_SIZE_TRAIN=(20,),
                   **{"CROP.ENABLED": True, "CROP.TYPE": "absolute", "CROP.SIZE": [24, 48]})
    out = FrameMapper(cfg, is_train=True)(records[0])  # resized to 20x32, cropped to 20x32
    assert out["image"].shape == (3, 24, 48) and out["sem_seg"].shape == (24, 48)
    assert (out["image"][:, 20:] == 0).all() and (out["image"][:, :, 32:] == 0).all()
    assert (out["sem_seg"][20:] == 255).all() and (out["sem_seg"][:, 32:] == 255).all()
    assert (out["sem_seg"][:20, :32] != 255).all()
    with pytest.raises(ValueError, match="PAD_TO_CROP pads to an absolute crop size"):
        FrameMapper(make_cfg(name, PAD_TO_CROP=True), is_train=True)

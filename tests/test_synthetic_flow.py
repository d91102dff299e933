"""Ground-truth flow of the synthetic videos and the Middlebury .flo reader/writer."""
import hashlib
import json
import os

import cv2
import numpy as np
import pytest

from vss.data.flow_io import read_flo, write_flo
from vss.data.synthetic import generate, ground_truth_flow, layered_flow, render_video
from vss.data.video_effects import PRESETS

SMALL = dict(train_videos=1, val_videos=2, frames=14, height=48, width=64)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic_flow") / "synthetic_vss")
    generate(root, **SMALL, flow_files=True)
    return root


@pytest.fixture(scope="module")
def effects_root(tmp_path_factory):
    """With every effect, and occluders in most videos."""
    root = str(tmp_path_factory.mktemp("synthetic_flow") / "synthetic_vss_fx")
    generate(root, **SMALL, effects={**PRESETS["effects"], "occlusions": 3.0})
    return root


def frame_file(root, video, folder, t, ext):
    return os.path.join(root, "data", video, folder, f"{t:08d}{ext}")


def read_png(path):
    return cv2.imread(path, cv2.IMREAD_UNCHANGED)


def warp_from(key, flow):
    """Backward warp of `key` (H, W, ...) by an integer flow, clamped at the border."""
    h, w = flow.shape[:2]
    ys, xs = np.mgrid[:h, :w]
    qx = np.clip(xs + np.rint(flow[..., 0]).astype(int), 0, w - 1)
    qy = np.clip(ys + np.rint(flow[..., 1]).astype(int), 0, h - 1)
    return key[qy, qx]


def test_hand_built_two_layers():
    # Background moves right by 1 per frame, a 2x2 square layer moves left by 2.
    positions = np.array([[[0, 0], [1, 0]], [[3, 1], [1, 1]]])
    layers0 = np.zeros((4, 6), np.uint8)
    layers0[1:3, 3:5] = 1
    layers1 = np.zeros((4, 6), np.uint8)
    layers1[1:3, 1:3] = 1

    flow, valid = layered_flow(positions, layers1, layers0, 1, 0)
    expected = np.zeros((4, 6, 2), np.float32)
    expected[..., 0] = -1
    expected[1:3, 1:3, 0] = 2
    assert flow.dtype == np.float32 and flow.shape == (4, 6, 2)
    np.testing.assert_array_equal(flow, expected)
    # Background: column 0 comes from outside the key frame; (row 1-2, col 4-5) were under the square.
    expected_valid = np.ones((4, 6), bool)
    expected_valid[:, 0] = False
    expected_valid[1:3, 4:6] = False
    np.testing.assert_array_equal(valid, expected_valid)

    # Forward: the background that the square covers in frame 1 is occluded there.
    flow, valid = layered_flow(positions, layers0, layers1, 0, 1)
    assert (flow[1:3, 3:5] == [-2, 0]).all() and (flow[0] == [1, 0]).all()
    expected_valid = np.ones((4, 6), bool)
    expected_valid[:, 5] = False
    expected_valid[1:3, 0:2] = False  # +1 lands on columns 1-2, under the square in frame 1
    np.testing.assert_array_equal(valid, expected_valid)


def test_same_frame_is_zero_flow_everywhere_valid(root):
    flow, valid = ground_truth_flow(root, "val_0000", 4, 4)
    assert flow.shape == (48, 64, 2) and not flow.any() and valid.all()


@pytest.mark.parametrize("video", ["train_0000", "val_0000", "val_0001"])
def test_warping_the_key_frame_reproduces_the_frame(root, video):
    check_warping(root, video, max_error=10)


@pytest.mark.parametrize("video", ["train_0000", "val_0000", "val_0001"])
def test_flow_stays_exact_under_effects(effects_root, video):
    # Blur, noise, flicker and JPEG change pixels only (so no pixel check): labels still warp exactly.
    check_warping(effects_root, video, max_error=None)


def test_effects_set_has_occluders(effects_root):
    # Occluders (pillars of class wall, near persons) are layers after the objects, which are never walls.
    classes = []
    for video in ("train_0000", "val_0000", "val_0001"):
        with open(os.path.join(effects_root, "data", video, "motion.json")) as f:
            classes += [layer["class"] for layer in json.load(f)["layers"]]
    assert "wall" in classes


def check_warping(root, video, max_error):
    labels = [read_png(frame_file(root, video, "mask", t, ".png")) for t in range(14)]
    images = [cv2.imread(frame_file(root, video, "origin", t, ".jpg")).astype(np.float64) for t in range(14)]
    pairs = [(t, t - g) for g in (1, 3, 10) for t in (g, 13)] + [(0, 7), (2, 12)]
    compared = 0
    for frame, key in pairs:
        flow, valid = ground_truth_flow(root, video, frame, key)
        assert flow.dtype == np.float32 and valid.dtype == bool and valid.mean() < 1
        # Integer motion: exact on every valid pixel.
        np.testing.assert_array_equal(warp_from(labels[key], flow)[valid], labels[frame][valid])
        # Where things move, pixels agree up to the sensor noise and JPEG; copying is far off.
        moving = valid & flow.any(-1)
        if max_error is not None and moving.sum() >= 20:
            compared += 1
            warped = np.abs(warp_from(images[key], flow) - images[frame])[moving].mean()
            copied = np.abs(images[key] - images[frame])[moving].mean()
            assert warped < max_error and warped < 0.5 * copied, (frame, key, warped, copied)
        # Inside the frame, invalid pixels are the ones hidden in the key frame: most change label.
        h, w = valid.shape
        ys, xs = np.mgrid[:h, :w]
        inside = ((xs + flow[..., 0] >= 0) & (xs + flow[..., 0] < w)
                  & (ys + flow[..., 1] >= 0) & (ys + flow[..., 1] < h))
        hidden = inside & ~valid
        if hidden.sum() > 20:
            changed = warp_from(labels[key], flow)[hidden] != labels[frame][hidden]
            assert changed.mean() > 0.5, (frame, key, changed.mean())
    assert max_error is None or compared >= len(pairs) - 2


def test_both_directions_invert_each_other(root):
    backward, valid_b = ground_truth_flow(root, "val_0001", 9, 2)
    forward, valid_f = ground_truth_flow(root, "val_0001", 2, 9)
    ys, xs = np.mgrid[:48, :64]
    qx = (xs + backward[..., 0]).astype(int)[valid_b]
    qy = (ys + backward[..., 1]).astype(int)[valid_b]
    # A point seen in both frames maps back to where it started, and is valid both ways.
    assert valid_f[qy, qx].all()
    np.testing.assert_array_equal(forward[qy, qx], -backward[valid_b])


def test_flow_files_match_the_api(root):
    for t in (1, 7, 13):
        flow, valid = ground_truth_flow(root, "val_0000", t, t - 1)
        np.testing.assert_array_equal(read_flo(frame_file(root, "val_0000", "flow", t, ".flo")), flow)
        np.testing.assert_array_equal(read_png(frame_file(root, "val_0000", "flow_valid", t, ".png")),
                                      valid.astype(np.uint8) * 255)
    assert not os.path.exists(frame_file(root, "val_0000", "flow", 0, ".flo"))
    # Objects and the camera move: consecutive frames have non-zero flow.
    assert np.abs(read_flo(frame_file(root, "val_0000", "flow", 5, ".flo"))).max() >= 1


def test_bad_requests_name_the_video_and_frame(root, tmp_path):
    with pytest.raises(ValueError, match=r"val_0000: key_frame must be a frame index in \[0, 14\), got 14"):
        ground_truth_flow(root, "val_0000", 3, 14)
    with pytest.raises(ValueError, match=r"frame must be a frame index in \[0, 14\), got -1"):
        ground_truth_flow(root, "val_0000", -1, 0)
    with pytest.raises(FileNotFoundError, match="val_0099: no such synthetic video"):
        ground_truth_flow(root, "val_0099", 1, 0)
    old = tmp_path / "data" / "val_0000" / "origin"
    old.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="motion.json is missing.*older generator"):
        ground_truth_flow(str(tmp_path), "val_0000", 1, 0)


def test_flow_is_available_without_flow_files(tmp_path):
    generate(str(tmp_path), **{**SMALL, "val_videos": 1, "frames": 3})
    assert not os.path.exists(tmp_path / "data" / "val_0000" / "flow")
    flow, valid = ground_truth_flow(str(tmp_path), "val_0000", 2, 0)
    assert flow.shape == (48, 64, 2) and valid.any()


def test_default_frames_unchanged_by_the_motion_output():
    # Hash of a default-size video written by generator version 1 (before the layer maps):
    # the layers and flow came without changing a pixel or label of the clean set.
    out = render_video(np.random.default_rng([0, 1, 0]), 20, 120, 160)
    digest = hashlib.md5(out["images"].tobytes() + out["labels"].tobytes()).hexdigest()
    assert digest == "1ace6bbc9e71281187ed2e40e182acb4"


def test_flo_round_trip_and_header(tmp_path):
    path = str(tmp_path / "a.flo")
    flow = np.random.default_rng(0).normal(size=(3, 5, 2)).astype(np.float32)
    write_flo(path, flow)
    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == b"PIEH"  # 202021.25 as a little-endian float32
    assert np.frombuffer(data[4:12], "<i4").tolist() == [5, 3]
    assert len(data) == 12 + 3 * 5 * 2 * 4
    # u then v per pixel, rows first.
    assert np.frombuffer(data[12:20], "<f4").tolist() == flow[0, 0].tolist()
    assert np.frombuffer(data[20:24], "<f4")[0] == flow[0, 1, 0]
    back = read_flo(path)
    assert back.dtype == np.float32 and back.flags.writeable
    np.testing.assert_array_equal(back, flow)


def test_flo_errors_name_the_file(tmp_path):
    path = str(tmp_path / "bad.flo")
    write_flo(path, np.zeros((4, 4, 2), np.float32))
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:-8])
    with pytest.raises(ValueError, match=r"bad\.flo: 132 bytes, expected 140 for a 4x4 \.flo file"):
        read_flo(path)
    with open(path, "wb") as f:
        f.write(data[:6])
    with pytest.raises(ValueError, match=r"bad\.flo: 6 bytes, too short for a \.flo header"):
        read_flo(path)
    with open(path, "wb") as f:
        f.write(b"\x89PNG" + data[4:])
    with pytest.raises(ValueError, match=r"bad\.flo: not a \.flo file"):
        read_flo(path)
    with pytest.raises(ValueError, match=r"x\.flo: flow must have shape \(H, W, 2\)"):
        write_flo(str(tmp_path / "x.flo"), np.zeros((4, 4, 3)))

"""Flow-pair records and the pair mapper: the flow follows the shared augmentation (on content)."""
import numpy as np
import pytest
import torch
from detectron2.data import transforms as T
from PIL import Image

from vss.data.datasets import flow_pair_records
from vss.data.flow_pairs import FlowPairMapper, transform_flow
from vss.modeling.mpvss.warp import warp_masks

H, W = 48, 64
SHIFT = (3, -2)  # backward flow (dx, dy): pixel p of the frame shows the key frame's p + SHIFT


def texture(xs, ys):
    """A smooth colour texture, so bilinear resampling errors stay small."""
    return np.stack([128 + 60 * np.sin(xs / 5.0 + c) * np.cos(ys / 7.0 - c) for c in range(3)], -1)


def write_pair(folder):
    ys, xs = np.mgrid[:H, :W].astype(np.float64)
    key = texture(xs, ys)
    frame = texture(xs + SHIFT[0], ys + SHIFT[1])
    paths = []
    for name, img in (("frame", frame), ("key", key)):
        path = str(folder / f"{name}.png")
        Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8)).save(path)
        paths.append(path)
    return {"file_name": paths[0], "key_file_name": paths[1], "height": H, "width": W, "video_id": "v",
            "frame_idx": 5, "key_frame_idx": 3, "gap": 2, "image_id": "v/5-3", "flow_root": str(folder)}


def ground_truth(root, video, frame, key_frame):
    assert (video, frame, key_frame) == ("v", 5, 3)
    flow = np.empty((H, W, 2), np.float32)
    flow[...] = SHIFT
    valid = np.ones((H, W), bool)
    valid[:, :10] = False  # marks the left edge, to follow it through the flip
    return flow, valid


def warp(key_image, flow):
    """The key frame sampled at p + flow(p) (the model's warp, here on pixels)."""
    return warp_masks(key_image[None].float(), flow[None, None])[0]


def test_pair_records_both_directions_and_gaps():
    frames = [{"file_name": f"{v}/{t}.jpg", "video_id": v, "frame_idx": t, "height": 4, "width": 6}
              for v in ("a", "b") for t in range(4)]
    backward = flow_pair_records(frames, "root", 2, both_directions=False)
    assert [(r["video_id"], r["frame_idx"], r["key_frame_idx"]) for r in backward if r["video_id"] == "a"] == [
        ("a", 1, 0), ("a", 2, 1), ("a", 2, 0), ("a", 3, 2), ("a", 3, 1)]
    both = flow_pair_records(frames, "root", 2, both_directions=True)
    assert len(both) == 2 * (5 + 5)
    assert {r["gap"] for r in both} == {1, 2, -1, -2}
    rec = next(r for r in both if r["gap"] == -2)
    assert rec["key_file_name"] == f"{rec['video_id']}/{rec['frame_idx'] + 2}.jpg" and rec["flow_root"] == "root"
    with pytest.raises(ValueError, match="max_gap must be >= 1"):
        flow_pair_records(frames, "root", 0, both_directions=True)


def test_pair_records_never_use_a_missing_frame():
    # frame 2 is missing: frame_idx numbers the video, list positions do not
    frames = [{"file_name": f"a/{t}.jpg", "video_id": "a", "frame_idx": t, "height": 4, "width": 6}
              for t in (0, 1, 3, 4)]
    pairs = flow_pair_records(frames, "root", 2, both_directions=False)
    assert [(r["frame_idx"], r["key_frame_idx"], r["gap"]) for r in pairs] == [
        (1, 0, 1), (3, 1, 2), (4, 3, 1)]
    assert all(r["key_file_name"] == f"a/{r['key_frame_idx']}.jpg" for r in pairs)


def test_flow_follows_resize_crop_and_flip_on_content(tmp_path):
    record = write_pair(tmp_path)
    augs = [T.ResizeShortestEdge(72, 1000), T.RandomCrop("absolute", (56, 88)), T.RandomFlip(prob=1.0)]
    mapper = FlowPairMapper(True, augmentations=augs, image_format="RGB", ground_truth=ground_truth)
    for seed in range(3):
        np.random.seed(seed)
        out = mapper(record)
        image, key, flow, valid = out["image"], out["key_image"], out["flow"], out["flow_valid"]
        assert image.shape == key.shape == (3, 56, 88) and flow.shape == (2, 56, 88) and valid.shape == (56, 88)
        # x1.5 resize scales the vectors, the flip negates dx, the crop moves nothing
        assert torch.equal(flow, torch.tensor([-4.5, -3.0]).view(2, 1, 1).expand(2, 56, 88))
        # the invalid left 10 columns (15 after the resize, 7+ after the crop) end on the right after the flip
        columns = valid.all(0)
        assert not columns[-1] and columns[0] and valid.any(1).all()
        inner = (slice(None), slice(6, -6), slice(6, -6))  # away from the border clamping
        good = (warp(key, flow) - image.float())[inner].abs().mean()
        unflipped = (warp(key, flow * torch.tensor([-1.0, 1.0]).view(2, 1, 1)) - image.float())[inner].abs().mean()
        assert good < 3 and unflipped > 5 * good


def test_test_mode_resizes_frames_and_keeps_flow_at_record_size(tmp_path):
    record = write_pair(tmp_path)
    mapper = FlowPairMapper(False, augmentations=[T.ResizeShortestEdge(96, 1000)], image_format="RGB",
                            ground_truth=ground_truth)
    out = mapper(record)
    assert out["image"].shape == out["key_image"].shape == (3, 96, 128)
    assert out["flow"].shape == (2, H, W) and torch.equal(out["flow"][:, 0, 0], torch.tensor([3.0, -2.0]))
    assert out["gap"] == 2 and out["image_id"] == "v/5-3"


def test_transform_flow_rejects_non_affine_and_checks_ground_truth_size(tmp_path):
    class Warp(T.Transform):
        def apply_image(self, img):
            return img

        def apply_coords(self, coords):
            return coords * coords[:, :1]  # (x * x, y * x)

    with pytest.raises(ValueError, match="Warp is not affine"):
        transform_flow(T.TransformList([Warp()]), np.zeros((2, 2, 2), np.float32), np.ones((2, 2), bool))
    record = write_pair(tmp_path)
    bad = FlowPairMapper(False, augmentations=[], image_format="RGB",
                         ground_truth=lambda *a: (np.zeros((H, W - 1, 2), np.float32), np.ones((H, W - 1), bool)))
    with pytest.raises(ValueError, match=r"ground-truth flow of pair v/5-3 is \(48, 63, 2\)"):
        bad(record)

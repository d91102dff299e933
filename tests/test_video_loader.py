"""Per-video grouping, the whole-video inference sampler, and the train / test loaders."""
import logging
import os
import uuid

import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from PIL import Image

import vss  # noqa: F401  (registers the built-in datasets)
from vss import add_vss_config
from vss.data.build import build_mapper, build_video_train_loader
from vss.data.datasets import register_vspw_layout
from vss.data.mappers import ClipMapper, FrameMapper, PairMapper
from vss.data.video import VideoInferenceSampler, build_video_test_loader, group_by_video

NUM_CLASSES = 4


def write_dataset(root, videos, labelled=lambda video, k: True, split="train", offset=0):
    """videos: {video: n_frames}; 6x8 PNG frames filled with 10k + offset, labels with class k % 4.

    Registers the folder and returns its dataset name.
    """
    root = str(root)
    with open(os.path.join(root, f"{split}.txt"), "w") as f:
        f.write("\n".join(videos) + "\n")
    for video, n in videos.items():
        os.makedirs(os.path.join(root, "data", video, "origin"))
        os.makedirs(os.path.join(root, "data", video, "mask"))
        for k in range(n):
            Image.fromarray(np.full((6, 8, 3), 10 * k + offset, np.uint8)).save(
                os.path.join(root, "data", video, "origin", f"{k:05d}.png"))
            if labelled(video, k):
                Image.fromarray(np.full((6, 8), k % NUM_CLASSES + 1, np.uint8)).save(
                    os.path.join(root, "data", video, "mask", f"{k:05d}.png"))
    name = f"test_video_{uuid.uuid4().hex[:8]}"
    register_vspw_layout(name, root, split, [f"c{i}" for i in range(NUM_CLASSES)],
                         [(i, i, i) for i in range(NUM_CLASSES)])
    return name


def subdir(tmp_path, name):
    os.makedirs(tmp_path / name)
    return tmp_path / name


def make_cfg(train=(), sampler="frame"):
    cfg = get_cfg()
    add_vss_config(cfg)
    cfg.DATASETS.TRAIN = tuple(train)
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.MIN_SIZE_TRAIN = (6,)
    cfg.INPUT.MIN_SIZE_TEST = 0
    cfg.INPUT.CROP.ENABLED = False
    cfg.INPUT.VIDEO.SAMPLER = sampler
    cfg.INPUT.VIDEO.CLIP_OFFSETS = [-2, 0]
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.DATALOADER.NUM_WORKERS = 0
    return cfg


def fake_records(lengths):
    return [{"video_id": f"v{i}", "frame_idx": k, "file_name": f"v{i}/{k}.jpg"}
            for i, n in enumerate(lengths) for k in range(n)]


def test_group_by_video_keeps_frame_order():
    records = fake_records([3, 1, 2])
    videos = group_by_video(records)
    assert list(videos) == ["v0", "v1", "v2"]
    assert [r["frame_idx"] for r in videos["v0"]] == [0, 1, 2]
    assert videos["v2"] == records[4:6]


def test_group_by_video_keeps_gaps():
    records = [{"video_id": "v", "frame_idx": k, "file_name": f"v/{k}.jpg"} for k in (0, 2, 5)]
    assert [r["frame_idx"] for r in group_by_video(records)["v"]] == [0, 2, 5]
    assert list(VideoInferenceSampler(records, 0, 1)) == [0, 1, 2]


@pytest.mark.parametrize("swap, match", [
    (lambda r: r[1].update(frame_idx=0), r"video 'v0' has frame_idx 0 twice: v0/0.jpg and v0/1.jpg"),
    (lambda r: r[1].update(frame_idx=5),
     r"video 'v0' is out of frame order: v0/2.jpg has frame_idx 2 after v0/1.jpg with frame_idx 5"),
    (lambda r: r.append(dict(r[0])), r"records of video 'v0' are not consecutive"),
])
def test_group_by_video_rejects_bad_order(swap, match):
    records = fake_records([3, 2])
    swap(records)
    with pytest.raises(ValueError, match=match):
        group_by_video(records)


def test_sampler_gives_whole_videos_to_ranks():
    lengths = [5, 3, 3, 2, 1]
    records = fake_records(lengths)
    for world_size in (1, 2, 3, 7):
        per_rank = [list(VideoInferenceSampler(records, rank, world_size)) for rank in range(world_size)]
        assert sorted(i for idx in per_rank for i in idx) == list(range(len(records)))
        loads = []
        for indices in per_rank:
            # Ascending indices = videos in dataset order, each in frame order.
            assert indices == sorted(indices)
            videos = {records[i]["video_id"] for i in indices}
            assert indices == [i for i, r in enumerate(records) if r["video_id"] in videos]
            loads.append(len(indices))
        assert max(loads) - min(loads) <= max(lengths)
    # Longest first to the least loaded rank: v0 -> 0, v1 -> 1, v2 -> 1, v3 -> 0, v4 -> 1.
    assert [records[i]["video_id"] for i in VideoInferenceSampler(records, 0, 2)] == ["v0"] * 5 + ["v3"] * 2
    assert len(VideoInferenceSampler(records, 1, 2)) == 7
    assert len(VideoInferenceSampler(records, 6, 7)) == 0  # more ranks than videos
    with pytest.raises(ValueError, match="rank 2 is outside world size 2"):
        VideoInferenceSampler(records, 2, 2)
    with pytest.raises(ValueError, match="no frames"):
        VideoInferenceSampler([], 0, 1)


def test_test_loader_yields_videos_in_order(tmp_path):
    name = write_dataset(tmp_path, {"b": 3, "a": 2, "c": 1}, labelled=lambda v, k: k == 0, split="val")
    loader = build_video_test_loader(make_cfg(), name)
    items = [batch for batch in loader]
    assert all(len(batch) == 1 for batch in items)
    got = [(d["video_id"], d["frame_idx"]) for (d,) in items]
    assert got == [("b", 0), ("b", 1), ("b", 2), ("a", 0), ("a", 1), ("c", 0)]
    for (d,) in items:
        assert d["image"].shape == (3, 6, 8) and (d["image"] == 10 * d["frame_idx"]).all()
        assert (d["height"], d["width"]) == (6, 8)
        assert d["file_name"].endswith(f"{d['video_id']}/origin/{d['frame_idx']:05d}.png")


def test_test_loader_errors_name_the_dataset_or_video(tmp_path):
    empty = f"test_video_empty_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(empty, lambda: [])
    with pytest.raises(ValueError, match=f"dataset '{empty}' has no frames"):
        build_video_test_loader(make_cfg(), empty)

    shuffled = f"test_video_shuffled_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(shuffled, lambda: fake_records([2, 2])[::-1])
    with pytest.raises(ValueError, match=f"dataset '{shuffled}': video 'v1' is out of frame order"):
        build_video_test_loader(make_cfg(), shuffled)

    name = write_dataset(tmp_path, {"full": 2, "hollow": 0}, split="val")
    with pytest.raises(ValueError, match="video 'hollow' has no frames"):
        build_video_test_loader(make_cfg(), name)

    with pytest.raises(KeyError, match="'no_such_set' is not registered.*vspw_val"):
        build_video_test_loader(make_cfg(), "no_such_set")


def take(loader, n):
    it = iter(loader)
    return [d for _ in range(n) for d in next(it)]


def test_train_loader_frame_sampler_uses_labelled_frames(tmp_path, caplog):
    name = write_dataset(tmp_path, {"v": 6}, labelled=lambda v, k: k % 2 == 1)
    with caplog.at_level(logging.INFO, logger="vss.data.build"):
        loader = build_video_train_loader(make_cfg([name], "frame"))
    assert "training on 3 of 6 frames" in caplog.text and "3 unlabelled" in caplog.text
    samples = take(loader, 6)
    assert len(samples) == 12
    assert {d["frame_idx"] for d in samples} == {1, 3, 5}
    for d in samples:
        assert (d["sem_seg"] == d["frame_idx"] % NUM_CLASSES).all()
        assert (d["image"] == 10 * d["frame_idx"]).all()


def test_train_loader_pair_sampler_skips_first_frames(tmp_path, caplog):
    name = write_dataset(tmp_path, {"v": 4, "w": 3}, labelled=lambda v, k: not (v == "w" and k == 2))
    with caplog.at_level(logging.INFO, logger="vss.data.build"):
        loader = build_video_train_loader(make_cfg([name], "pair"))
    assert "training on 4 of 7 frames" in caplog.text
    assert "1 unlabelled" in caplog.text and "2 first frame of its video" in caplog.text
    samples = take(loader, 10)
    assert {(d["video_id"], d["frame_idx"]) for d in samples} == {("v", 1), ("v", 2), ("v", 3), ("w", 1)}
    for d in samples:
        assert 1 <= d["frame_idx"] - d["key_frame_idx"] <= d["frame_idx"]
        assert (d["key_image"] == 10 * d["key_frame_idx"]).all()


def test_train_loader_pair_sampler_drops_targets_after_a_long_gap(tmp_path, caplog):
    name = write_dataset(tmp_path, {"v": 8})
    for k in (2, 3, 4):
        os.remove(tmp_path / "data" / "v" / "origin" / f"{k:05d}.png")
    cfg = make_cfg([name], "pair")
    cfg.INPUT.VIDEO.PAIR_MAX_GAP = 3
    with caplog.at_level(logging.INFO, logger="vss.data.build"):
        loader = build_video_train_loader(cfg)
    assert "training on 3 of 5 frames" in caplog.text
    assert "1 after missing frames, no earlier frame within INPUT.VIDEO.PAIR_MAX_GAP=3" in caplog.text
    samples = take(loader, 12)
    # Frame 5 is 4 frames after frame 1, its nearest: it cannot be a target. Keys are never missing frames.
    assert {d["frame_idx"] for d in samples} <= {1, 6, 7}
    assert all(d["key_frame_idx"] in (0, 1, 5, 6) for d in samples)


def test_train_loader_clip_sampler_over_two_datasets(tmp_path):
    a = write_dataset(subdir(tmp_path, "a"), {"v": 3})
    b = write_dataset(subdir(tmp_path, "b"), {"w": 3}, offset=1)
    samples = take(build_video_train_loader(make_cfg([a, b], "clip")), 8)
    assert {d["video_id"] for d in samples} == {"v", "w"}
    for d in samples:
        offset = 1 if d["video_id"] == "w" else 0
        t = d["frame_idx"]
        assert d["frame_indices"] == [max(t - 2, 0), t]
        assert [int(im[0, 0, 0]) for im in d["images"]] == [10 * i + offset for i in d["frame_indices"]]
        assert len(d["sem_segs"]) == 2 and d["instances"].gt_classes.tolist() == [t % NUM_CLASSES]


def test_train_loader_errors(tmp_path):
    with pytest.raises(KeyError, match="'no_such_set' is not registered.*vspw_train"):
        build_video_train_loader(make_cfg(["no_such_set"]))
    name = write_dataset(tmp_path, {"v": 2})
    with open(tmp_path / "train.txt", "a") as f:
        f.write("ghost\n")
    with pytest.raises(FileNotFoundError, match="'ghost'"):
        build_video_train_loader(make_cfg([name]))

    unlabelled = write_dataset(subdir(tmp_path, "u"),
                               {"v": 2}, labelled=lambda v, k: False)
    with pytest.raises(ValueError, match=f"no usable training frames.*{unlabelled}.*'unlabelled': 2"):
        build_video_train_loader(make_cfg([unlabelled]))

    cfg = make_cfg([unlabelled])
    cfg.DATALOADER.SAMPLER_TRAIN = "RepeatFactorTrainingSampler"
    with pytest.raises(ValueError, match="RepeatFactorTrainingSampler"):
        build_video_train_loader(cfg)
    with pytest.raises(ValueError, match="names no dataset"):
        build_video_train_loader(make_cfg([]))


def test_train_datasets_must_agree_on_labels(tmp_path):
    a = write_dataset(subdir(tmp_path, "a"), {"v": 2})
    write_dataset(subdir(tmp_path, "b"), {"w": 2})
    other = f"test_video_other_{uuid.uuid4().hex[:8]}"
    register_vspw_layout(other, str(tmp_path / "b"), "train", ["x"], [(0, 0, 0)])
    with pytest.raises(ValueError, match="disagree on \\(num_classes, label_offset\\)"):
        build_video_train_loader(make_cfg([a, other]))


def test_same_video_in_two_train_datasets(tmp_path):
    a = write_dataset(subdir(tmp_path, "a"), {"v": 2})
    b = write_dataset(subdir(tmp_path, "b"), {"v": 2})
    with pytest.raises(ValueError, match="video 'v' has frame_idx 0 twice.*same video id"):
        build_video_train_loader(make_cfg([a, b]))


def test_build_mapper_by_sampler(tmp_path):
    name = write_dataset(tmp_path, {"v": 3})
    videos = group_by_video(DatasetCatalog.get(name))
    assert type(build_mapper(make_cfg([name], "frame"))) is FrameMapper
    assert type(build_mapper(make_cfg([name], "pair"), videos=videos)) is PairMapper
    clip = build_mapper(make_cfg([name], "clip"), videos=videos)
    assert type(clip) is ClipMapper and clip.offsets == [-2, 0]
    test_mapper = build_mapper(make_cfg([name], "clip"), is_train=False)
    assert type(test_mapper) is FrameMapper and not test_mapper.is_train
    with pytest.raises(ValueError, match="needs `videos`"):
        build_mapper(make_cfg([name], "pair"))
    with pytest.raises(ValueError, match="SAMPLER is 'frames'"):
        build_mapper(make_cfg([name], "frames"))

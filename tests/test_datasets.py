"""Dataset registration and layout loading, including bad input."""
import json
import logging
import os
import uuid

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

import vss  # noqa: F401  (registers the built-in datasets)
from vss.data.datasets import (
    load_cityscapes_video,
    load_vspw_layout,
    register_all_cityscapes_video,
    register_all_synthetic,
    register_all_vspw,
    register_video_folder,
    register_video_folders,
    register_vspw_layout,
)
from vss.data.datasets.synthetic import SYNTHETIC_SETS
from vss.data.io import read_frame, read_label


def write_vspw(root, videos, split="val", size=(6, 8), labelled=True):
    """videos: {video_id: n_frames}. Label of frame k of every video is filled with k + 1."""
    h, w = size
    with open(os.path.join(root, f"{split}.txt"), "w") as f:
        f.write("\n".join(videos) + "\n")
    for video, n in videos.items():
        os.makedirs(os.path.join(root, "data", video, "origin"), exist_ok=True)
        os.makedirs(os.path.join(root, "data", video, "mask"), exist_ok=True)
        for k in range(n):
            Image.fromarray(np.full((h, w, 3), 10 * k, np.uint8)).save(
                os.path.join(root, "data", video, "origin", f"{k:05d}.jpg"))
            if labelled:
                Image.fromarray(np.full((h, w), k + 1, np.uint8)).save(
                    os.path.join(root, "data", video, "mask", f"{k:05d}.png"))


def unique(prefix):
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def test_builtin_names_and_metadata():
    for name in ["vspw_train", "vspw_val", "vspw_test", "cityscapes_video_train",
                 "cityscapes_video_val", "synthetic_vss_train", "synthetic_vss_val"]:
        assert name in DatasetCatalog.list()
    vspw = MetadataCatalog.get("vspw_val")
    assert len(vspw.stuff_classes) == 124 and vspw.stuff_classes[0] == "wall"
    assert vspw.label_offset == 1 and vspw.ignore_label == 255
    assert len(vspw.stuff_colors) == 124 and vspw.stuff_colors[0] == [120, 120, 120]
    city = MetadataCatalog.get("cityscapes_video_val")
    assert len(city.stuff_classes) == 19 and city.label_offset == 0
    assert len(MetadataCatalog.get("synthetic_vss_train").stuff_classes) == 8


def test_unknown_dataset_name_lists_registered():
    with pytest.raises(KeyError, match="not registered.*vspw_val"):
        DatasetCatalog.get("vspw_vall")


def test_vspw_layout_records(tmp_path):
    write_vspw(tmp_path, {"b_video": 3, "a_video": 2}, size=(6, 8))
    os.remove(tmp_path / "data" / "a_video" / "mask" / "00001.png")
    records = load_vspw_layout(str(tmp_path), "val")
    # Split-file order is kept; frames in name order with positions 0..n-1.
    assert [(r["video_id"], r["frame_idx"]) for r in records] == [
        ("b_video", 0), ("b_video", 1), ("b_video", 2), ("a_video", 0), ("a_video", 1)]
    assert all((r["height"], r["width"]) == (6, 8) for r in records)
    assert records[0]["file_name"].endswith("b_video/origin/00000.jpg")
    assert records[2]["sem_seg_file_name"].endswith("b_video/mask/00002.png")
    assert records[4]["sem_seg_file_name"] is None  # no mask: unlabelled, not an error
    assert records[3]["image_id"] == "a_video/00000"


def test_vspw_split_names_missing_video(tmp_path):
    write_vspw(tmp_path, {"v1": 2})
    with open(tmp_path / "val.txt", "a") as f:
        f.write("ghost\n")
    with pytest.raises(FileNotFoundError, match="'ghost'.*val.txt"):
        load_vspw_layout(str(tmp_path), "val")


def test_vspw_missing_split_file_and_empty_video(tmp_path):
    with pytest.raises(FileNotFoundError, match="train.txt"):
        load_vspw_layout(str(tmp_path), "train")
    write_vspw(tmp_path, {"v1": 0})
    with pytest.raises(ValueError, match="'v1' has no frames"):
        load_vspw_layout(str(tmp_path), "val")


def test_registered_layout_dataset(tmp_path):
    write_vspw(tmp_path, {"v1": 2})
    name = unique("layout")
    register_vspw_layout(name, str(tmp_path), "val", ["a", "b", "c"], [(1, 2, 3)] * 3)
    assert len(DatasetCatalog.get(name)) == 2
    assert MetadataCatalog.get(name).stuff_classes == ["a", "b", "c"]


def test_folder_loader_json_and_txt(tmp_path):
    write_vspw(tmp_path, {"v1": 2})
    with open(tmp_path / "classes.json", "w") as f:
        json.dump({"classes": [{"name": "x", "color": [1, 2, 3]}, {"name": "y", "color": [4, 5, 6]}],
                   "label_offset": 0}, f)
    name = unique("folder")
    register_video_folder(name, str(tmp_path), "val")
    meta = MetadataCatalog.get(name)
    assert meta.stuff_classes == ["x", "y"] and meta.label_offset == 0
    assert meta.stuff_colors == [[1, 2, 3], [4, 5, 6]]

    os.remove(tmp_path / "classes.json")
    (tmp_path / "classes.txt").write_text("p\nq\nr\n")
    name = unique("folder")
    register_video_folder(name, str(tmp_path), "val")
    assert MetadataCatalog.get(name).stuff_classes == ["p", "q", "r"]
    assert MetadataCatalog.get(name).label_offset == 1

    os.remove(tmp_path / "classes.txt")
    with pytest.raises(FileNotFoundError, match="classes.json or classes.txt"):
        register_video_folder(unique("folder"), str(tmp_path), "val")


def test_vspw_label_remap(tmp_path):
    raw = np.array([[0, 1, 124, 255]], np.uint8)
    Image.fromarray(raw).save(tmp_path / "m.png")
    assert read_label(str(tmp_path / "m.png"), 124, label_offset=1).tolist() == [[255, 0, 123, 255]]
    Image.fromarray(np.array([[3, 125]], np.uint8)).save(tmp_path / "bad.png")
    with pytest.raises(ValueError, match=r"bad.png has values \[125\]"):
        read_label(str(tmp_path / "bad.png"), 124, label_offset=1)


def test_cityscapes_label_encoding(tmp_path):
    Image.fromarray(np.array([[0, 18, 255]], np.uint8)).save(tmp_path / "m.png")
    assert read_label(str(tmp_path / "m.png"), 19, label_offset=0).tolist() == [[0, 18, 255]]
    Image.fromarray(np.array([[19]], np.uint8)).save(tmp_path / "bad.png")
    with pytest.raises(ValueError, match="outside the class range"):
        read_label(str(tmp_path / "bad.png"), 19, label_offset=0)


def test_frames_of_any_mode(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    Image.fromarray(gray).save(tmp_path / "g.png")
    out = read_frame(str(tmp_path / "g.png"))
    assert out.shape == (3, 4, 3) and (out == gray[..., None]).all()
    rgba = np.zeros((3, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 7
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = read_frame(str(tmp_path / "a.png"), fmt="BGR")
    assert out.shape == (3, 4, 3) and (out[..., 2] == 200).all() and (out[..., :2] == 0).all()
    with pytest.raises(FileNotFoundError, match="missing.jpg does not exist"):
        read_frame(str(tmp_path / "missing.jpg"))
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.jpg is not a readable image"):
        read_frame(str(tmp_path / "broken.jpg"))


def test_cityscapes_video_layout(tmp_path):
    for split, city, seq, first in [("val", "lindau", "000001", 0), ("val", "munster", "000007", 275)]:
        seq_dir = tmp_path / "leftImg8bit_sequence" / split / city
        gt_dir = tmp_path / "gtFine" / split / city
        seq_dir.mkdir(parents=True, exist_ok=True)
        gt_dir.mkdir(parents=True, exist_ok=True)
        for k in range(first, first + 30):
            Image.fromarray(np.zeros((4, 8, 3), np.uint8)).save(
                seq_dir / f"{city}_{seq}_{k:06d}_leftImg8bit.png")
        Image.fromarray(np.zeros((4, 8), np.uint8)).save(
            gt_dir / f"{city}_{seq}_{first + 19:06d}_gtFine_labelTrainIds.png")
    records = load_cityscapes_video(str(tmp_path), "val")
    assert len(records) == 60
    by_video = {}
    for r in records:
        by_video.setdefault(r["video_id"], []).append(r)
    assert sorted(by_video) == ["lindau_000001", "munster_000007"]
    for frames in by_video.values():
        assert [r["frame_idx"] for r in frames] == list(range(30))
        labelled = [r["frame_idx"] for r in frames if r["sem_seg_file_name"]]
        assert labelled == [19]  # only the 20th frame is annotated
    assert by_video["munster_000007"][19]["image_id"] == "munster_000007_000294"


def test_cityscapes_without_train_ids_is_explained(tmp_path):
    (tmp_path / "leftImg8bit_sequence" / "val" / "ulm").mkdir(parents=True)
    (tmp_path / "gtFine" / "val").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 8, 3), np.uint8)).save(
        tmp_path / "leftImg8bit_sequence" / "val" / "ulm" / "ulm_000000_000000_leftImg8bit.png")
    with pytest.raises(ValueError, match="prepare_cityscapes_video.py"):
        load_cityscapes_video(str(tmp_path), "val")


@pytest.fixture
def builtins_under(tmp_path):
    """Re-registers the built-in datasets under an empty $DETECTRON2_DATASETS, then back."""
    registrations = [(register_all_vspw, ["vspw"], ("train", "val", "test")),
                     (register_all_cityscapes_video, ["cityscapes_video"], ("train", "val")),
                     (register_all_synthetic, list(SYNTHETIC_SETS), ("train", "val"))]
    original = os.path.dirname(MetadataCatalog.get("vspw_val").dataset_root)

    def register(root):
        for register_all, prefixes, splits in registrations:
            for name in (f"{prefix}_{split}" for prefix in prefixes for split in splits):
                DatasetCatalog.remove(name)
                MetadataCatalog.remove(name)
            register_all(root)

    register(str(tmp_path / "nowhere"))
    yield str(tmp_path / "nowhere")
    register(original)


@pytest.mark.parametrize("name, advice", [
    ("vspw_val", "download VSPW_480p from the VSPW site and unpack it as {root}/VSPW_480p"),
    ("synthetic_vss_train", "generate it with `.venv/bin/python datasets/prepare_synthetic.py --root "
                            "{root}/synthetic_vss`"),
    ("synthetic_vss_fx_val", "generate it with `.venv/bin/python datasets/prepare_synthetic.py --effects effects "
                             "--root {root}/synthetic_vss_fx`"),
    ("synthetic_vss_vspw_val", "generate it with `.venv/bin/python datasets/prepare_synthetic.py --effects vspw "
                               "--root {root}/synthetic_vss_vspw`"),
    ("synthetic_vss_ctx_val", "generate it with `.venv/bin/python datasets/prepare_synthetic.py --context 3 "
                              "--root {root}/synthetic_vss_ctx`"),
    ("cityscapes_video_val", "download leftImg8bit_sequence_trainvaltest.zip and gtFine_trainvaltest.zip from "
                             "the Cityscapes site, unzip both into {root}/cityscapes"),
])
def test_missing_builtin_dataset_says_where_to_get_it(name, advice, builtins_under):
    with pytest.raises(FileNotFoundError) as e:
        DatasetCatalog.get(name)
    message = str(e.value)
    assert builtins_under in message and advice.format(root=builtins_under) in message
    assert "see datasets/README.md" in message


def test_missing_folder_dataset_points_to_the_readme(tmp_path):
    (tmp_path / "classes.txt").write_text("a\nb\n")
    name = unique("folder")
    register_video_folder(name, str(tmp_path), "val")
    with pytest.raises(FileNotFoundError, match=r"val.txt does not exist .*datasets/README.md, 'Your own videos'"):
        DatasetCatalog.get(name)


def test_register_video_folders(tmp_path):
    write_vspw(tmp_path, {"v1": 2})
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    name = unique("folders")
    register_video_folders([[name, str(tmp_path), "val"]])
    assert len(DatasetCatalog.get(name)) == 2 and MetadataCatalog.get(name).stuff_classes == ["a", "b", "c"]
    register_video_folders([(name, str(tmp_path), "val")])  # the same entry again: nothing to do
    with pytest.raises(ValueError, match=f"name '{name}' is already registered .*choose another name"):
        register_video_folders([[name, str(tmp_path), "train"]])
    with pytest.raises(ValueError, match="name 'vspw_val' is already registered"):
        register_video_folders([["vspw_val", str(tmp_path), "val"]])
    with pytest.raises(ValueError, match=r"expected \[name, root, split\] triples of strings, got \['x', 'y'\]"):
        register_video_folders([["x", "y"]])
    with pytest.raises(FileNotFoundError, match=f"folder {tmp_path}/missing of dataset 'other' does not exist"):
        register_video_folders([["other", str(tmp_path / "missing"), "val"]])
    assert "other" not in DatasetCatalog.list()


def write_frames(folder, names, value=0, size=(4, 6)):
    os.makedirs(folder, exist_ok=True)
    for name in names:
        Image.fromarray(np.full(size + (3,), value, np.uint8)).save(os.path.join(folder, name))


def write_masks(folder, names, size=(4, 6)):
    os.makedirs(folder, exist_ok=True)
    for k, name in enumerate(names):
        Image.fromarray(np.full(size, k + 1, np.uint8)).save(os.path.join(folder, name))


def test_vspw_frames_in_number_order_without_padding(tmp_path):
    names = [f"frame{k}" for k in range(1, 13)]
    (tmp_path / "val.txt").write_text("v\n")
    write_frames(tmp_path / "data" / "v" / "origin", [n + ".jpg" for n in names])
    write_masks(tmp_path / "data" / "v" / "mask", [n + ".png" for n in names])
    records = load_vspw_layout(str(tmp_path), "val")
    # Plain string order would give frame1, frame10, frame11, frame12, frame2, ...
    assert [os.path.basename(r["file_name"]) for r in records] == [n + ".jpg" for n in names]
    assert [r["frame_idx"] for r in records] == list(range(12))  # counted from the first frame's number
    assert [os.path.basename(r["sem_seg_file_name"]) for r in records] == [n + ".png" for n in names]


def test_vspw_missing_frame_is_a_gap_and_warned_once(tmp_path, caplog):
    write_vspw(tmp_path, {"v": 8, "w": 3})
    for k in (3, 5, 6):
        os.remove(tmp_path / "data" / "v" / "origin" / f"{k:05d}.jpg")  # their masks stay
    with caplog.at_level(logging.WARNING, logger="vss.data.frames"):
        records = load_vspw_layout(str(tmp_path), "val")
    assert [(r["video_id"], r["frame_idx"]) for r in records] == [
        ("v", 0), ("v", 1), ("v", 2), ("v", 4), ("v", 7), ("w", 0), ("w", 1), ("w", 2)]
    assert records[3]["file_name"].endswith("v/origin/00004.jpg")
    assert records[3]["sem_seg_file_name"].endswith("v/mask/00004.png")
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1  # one per incomplete video, none for w
    message = warnings[0]
    assert "video v " in message and "3 frame(s) missing" in message and "frame_idx 3, 5-6" in message
    for k in (3, 5, 6):
        assert str(tmp_path / "data" / "v" / "mask" / f"{k:05d}.png") in message  # labels without a frame


def test_vspw_frames_without_numbers_keep_natural_order(tmp_path):
    names = ["b.jpg", "a.jpg", "c10.jpg", "c9.jpg"]
    (tmp_path / "val.txt").write_text("v\n")
    write_frames(tmp_path / "data" / "v" / "origin", names)
    records = load_vspw_layout(str(tmp_path), "val")
    assert [os.path.basename(r["file_name"]) for r in records] == ["a.jpg", "b.jpg", "c9.jpg", "c10.jpg"]
    assert [r["frame_idx"] for r in records] == [0, 1, 2, 3]


@pytest.mark.parametrize("names, match", [
    (["f1.jpg", "f01.jpg"], r"frames f01.jpg and f1.jpg both have frame number 1"),
    (["0001.jpg", "0001.png"], r"two frames named 0001.jpg and 0001.png"),
])
def test_vspw_ambiguous_frame_names(tmp_path, names, match):
    (tmp_path / "val.txt").write_text("v\n")
    write_frames(tmp_path / "data" / "v" / "origin", names)
    with pytest.raises(ValueError, match=match) as e:
        load_vspw_layout(str(tmp_path), "val")
    assert str(tmp_path / "data" / "v" / "origin") in str(e.value)


def test_cityscapes_missing_frame_is_a_gap(tmp_path, caplog):
    seq_dir = tmp_path / "leftImg8bit_sequence" / "val" / "ulm"
    gt_dir = tmp_path / "gtFine" / "val" / "ulm"
    write_frames(seq_dir, [f"ulm_000003_{k:06d}_leftImg8bit.png" for k in (100, 101, 103)])
    write_masks(gt_dir, [f"ulm_000003_{k:06d}_gtFine_labelTrainIds.png" for k in (101, 102)])
    with caplog.at_level(logging.WARNING):
        records = load_cityscapes_video(str(tmp_path), "val")
    assert [r["frame_idx"] for r in records] == [0, 1, 3]
    assert [r["sem_seg_file_name"] is not None for r in records] == [False, True, False]
    assert "frame_idx 2" in caplog.text
    assert str(gt_dir / "ulm_000003_000102_gtFine_labelTrainIds.png") in caplog.text


def test_vspw_frames_numbered_with_a_stride_are_consecutive(tmp_path, caplog):
    # Every 5th frame of a source video, one of them (25) deleted.
    numbers = [10, 15, 20, 30, 35]
    (tmp_path / "val.txt").write_text("v\n")
    write_frames(tmp_path / "data" / "v" / "origin", [f"{n:08d}.jpg" for n in numbers])
    with caplog.at_level(logging.WARNING, logger="vss.data.frames"):
        records = load_vspw_layout(str(tmp_path), "val")
    assert [r["frame_idx"] for r in records] == [0, 1, 2, 4, 5]
    assert "1 frame(s) missing from the numbering (frame_idx 3)" in caplog.text


def test_vspw_sparse_numbers_are_not_frame_numbers(tmp_path, caplog):
    stamps = [1700000000123, 1700000000160, 1700000000201]  # capture times in milliseconds
    (tmp_path / "val.txt").write_text("v\n")
    write_frames(tmp_path / "data" / "v" / "origin", [f"cam_{n}.jpg" for n in stamps])
    with caplog.at_level(logging.WARNING, logger="vss.data.frames"):
        records = load_vspw_layout(str(tmp_path), "val")
    assert [r["frame_idx"] for r in records] == [0, 1, 2]
    assert [os.path.basename(r["file_name"]) for r in records] == [f"cam_{n}.jpg" for n in stamps]
    assert "leave more gaps than frames" in caplog.text and str(tmp_path / "data" / "v" / "origin") in caplog.text


def test_vspw_frame_number_is_the_last_changing_number(tmp_path):
    names = [f"cam2_frame{k}_rgb8.jpg" for k in (3, 1, 5, 2)]
    (tmp_path / "val.txt").write_text("v\n")
    write_frames(tmp_path / "data" / "v" / "origin", names)
    records = load_vspw_layout(str(tmp_path), "val")
    assert [os.path.basename(r["file_name"]) for r in records] == [f"cam2_frame{k}_rgb8.jpg" for k in (1, 2, 3, 5)]
    assert [r["frame_idx"] for r in records] == [0, 1, 2, 4]

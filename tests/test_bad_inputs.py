"""Bad input and misuse, one case per test: each gives an error of a stated type whose message
names the file or key at fault and what was expected (or, for the tolerated cases, one
warning naming them). The README's "Reliability" section lists these cases.
"""
import logging
import os
import uuid

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from PIL import Image

from vss.data.datasets import load_cityscapes_video, load_vspw_layout, register_vspw_layout
from vss.data.datasets import root as dataset_root
from vss.data.mappers import FrameMapper
from vss.data.video import build_video_test_loader
from vss.engine import VideoPredictor, setup_cfg
from vss.evaluation import VSSEvaluator
from vss.modeling.video_state import VideoStates

from conftest import REPO, load_script

NUM_CLASSES = 4
H, W = 6, 8
TINY_CONFIG = str(REPO / "configs" / "synthetic" / "mask2former_tiny.yaml")
CPU = ["MODEL.DEVICE", "cpu"]


def write_video(root, video="v", frames=3, split="val", size=(H, W)):
    """One video in VSPW layout: frames 00000.jpg.. and masks with raw value k + 1; returns its folder."""
    with open(os.path.join(root, f"{split}.txt"), "a") as f:
        f.write(video + "\n")
    folder = os.path.join(root, "data", video)
    os.makedirs(os.path.join(folder, "origin"))
    os.makedirs(os.path.join(folder, "mask"))
    for k in range(frames):
        Image.fromarray(np.full(size + (3,), 20 * k, np.uint8)).save(os.path.join(folder, "origin", f"{k:05d}.jpg"))
        Image.fromarray(np.full(size, k % NUM_CLASSES + 1, np.uint8)).save(os.path.join(folder, "mask", f"{k:05d}.png"))
    return folder


def register(root, split="val"):
    name = f"bad_inputs_{uuid.uuid4().hex[:8]}"
    register_vspw_layout(name, str(root), split, [f"c{i}" for i in range(NUM_CLASSES)],
                         [(i, i, i) for i in range(NUM_CLASSES)])
    return name


def training_mapper():
    return FrameMapper(augmentations=[], image_format="RGB", num_classes=NUM_CLASSES, label_offset=1)


def first_record(tmp_path):
    write_video(str(tmp_path))
    return load_vspw_layout(str(tmp_path), "val")[0]


# Frames


def test_zero_byte_frame(tmp_path):
    record = first_record(tmp_path)
    open(record["file_name"], "wb").close()
    with pytest.raises(ValueError, match="is not a readable image") as e:
        training_mapper()(record)
    assert f"frame file {record['file_name']}" in str(e.value)


def test_truncated_frame(tmp_path):
    record = first_record(tmp_path)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (H, W, 3), np.uint8)).save(
        record["file_name"], quality=95)
    data = open(record["file_name"], "rb").read()
    open(record["file_name"], "wb").write(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated") as e:
        training_mapper()(record)
    assert f"frame file {record['file_name']} is not a readable image" in str(e.value)


def test_frame_size_changes_inside_a_video(tmp_path):
    folder = write_video(str(tmp_path), frames=3)
    Image.fromarray(np.zeros((H + 2, W, 3), np.uint8)).save(os.path.join(folder, "origin", "00002.jpg"))
    loader = build_video_test_loader(setup_cfg(TINY_CONFIG, CPU + ["DATALOADER.NUM_WORKERS", "0"]),
                                     register(tmp_path))
    with pytest.raises(ValueError, match=r"is 8x8 but its record says 6x8 \(the size of the video's first frame\)") as e:
        list(loader)
    assert os.path.join(folder, "origin", "00002.jpg") in str(e.value)


def test_ambiguous_frame_numbers(tmp_path):
    folder = write_video(str(tmp_path), frames=2)
    os.rename(os.path.join(folder, "origin", "00001.jpg"), os.path.join(folder, "origin", "0.jpg"))
    with pytest.raises(ValueError, match="frames 0.jpg and 00000.jpg both have frame number 0: "
                                         "expected one frame per number") as e:
        load_vspw_layout(str(tmp_path), "val")
    assert os.path.join(folder, "origin") in str(e.value)


def test_missing_frame_and_orphan_label_are_warned(tmp_path, caplog):
    folder = write_video(str(tmp_path), frames=4)
    os.remove(os.path.join(folder, "origin", "00002.jpg"))
    with caplog.at_level(logging.WARNING, logger="vss.data.frames"):
        records = load_vspw_layout(str(tmp_path), "val")
    assert [r["frame_idx"] for r in records] == [0, 1, 3]
    (message,) = [r.getMessage() for r in caplog.records if r.name == "vss.data.frames"]
    assert "frame_idx 2" in message and os.path.join(folder, "mask", "00002.png") in message


# Labels


def test_label_of_another_size(tmp_path):
    record = first_record(tmp_path)
    Image.fromarray(np.ones((H - 2, W), np.uint8)).save(record["sem_seg_file_name"])
    with pytest.raises(ValueError, match=r"is 4x8 but frame .* is 6x8") as e:
        training_mapper()(record)
    assert f"label {record['sem_seg_file_name']}" in str(e.value) and record["file_name"] in str(e.value)


def test_label_values_out_of_range(tmp_path):
    record = first_record(tmp_path)
    Image.fromarray(np.full((H, W), 9, np.uint8)).save(record["sem_seg_file_name"])
    with pytest.raises(ValueError, match=r"has values \[9\] outside the class range: expected raw values 1..4 "
                                         r"or ignore \(255\)") as e:
        training_mapper()(record)
    assert f"label file {record['sem_seg_file_name']}" in str(e.value)


def test_rgb_label(tmp_path):
    record = first_record(tmp_path)
    Image.fromarray(np.ones((H, W, 3), np.uint8)).save(record["sem_seg_file_name"])
    with pytest.raises(ValueError, match="has mode RGB; expected a single-channel PNG") as e:
        training_mapper()(record)
    assert f"label file {record['sem_seg_file_name']}" in str(e.value)


# Dataset layout


def test_empty_video_folder(tmp_path):
    folder = write_video(str(tmp_path), frames=0)
    with pytest.raises(ValueError, match=r"video 'v' has no frames in .* \(expected \('.jpg', '.jpeg', '.png'\) files\)") as e:
        load_vspw_layout(str(tmp_path), "val")
    assert os.path.join(folder, "origin") in str(e.value)


def test_split_file_names_a_missing_video(tmp_path):
    write_video(str(tmp_path))
    with open(tmp_path / "val.txt", "a") as f:
        f.write("ghost\n")
    with pytest.raises(FileNotFoundError, match="video 'ghost' listed in .*val.txt has no frame folder") as e:
        load_vspw_layout(str(tmp_path), "val")
    assert str(tmp_path / "data" / "ghost" / "origin") in str(e.value)


def test_builtin_dataset_missing_with_detectron2_datasets_unset(tmp_path, monkeypatch):
    # The built-in datasets are registered under DATASETS_ROOT, read at import: emulate an unset variable.
    monkeypatch.setattr(dataset_root, "DATASETS_ROOT", "datasets")
    monkeypatch.delenv("DETECTRON2_DATASETS", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as e:
        load_vspw_layout(os.path.join("datasets", "VSPW_480p"), "val")
    assert f"split file {tmp_path / 'datasets' / 'VSPW_480p' / 'val.txt'} does not exist" in str(e.value)
    assert f"DETECTRON2_DATASETS is unset, so the built-in datasets are looked up in ./datasets of the " \
           f"working directory, {tmp_path / 'datasets'}" in str(e.value)


def test_builtin_dataset_missing_under_detectron2_datasets(tmp_path, monkeypatch):
    monkeypatch.setattr(dataset_root, "DATASETS_ROOT", "store")
    monkeypatch.setenv("DETECTRON2_DATASETS", "store")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as e:
        load_cityscapes_video(os.path.join("store", "cityscapes"), "val")
    assert f"Cityscapes video folder {tmp_path / 'store' / 'cityscapes' / 'leftImg8bit_sequence' / 'val'} " \
           "does not exist" in str(e.value)
    assert f"looked up in DETECTRON2_DATASETS=store ({tmp_path / 'store'})" in str(e.value)


# Frame order at inference


def test_frames_going_backwards(tmp_path):
    write_video(str(tmp_path), frames=2)
    name = register(tmp_path)
    records = DatasetCatalog.get(name)
    evaluator = VSSEvaluator(name, distributed=False)
    scores = {"sem_seg": torch.zeros(NUM_CLASSES, H, W)}
    evaluator.process(records[1:2], [scores])
    with pytest.raises(ValueError, match="frame_idx 0 .* comes after frame_idx 1: frames of a video must be in "
                                         "increasing frame order") as e:
        evaluator.process(records[0:1], [scores])
    assert records[0]["file_name"] in str(e.value) and "video 'v'" in str(e.value)


def test_interleaved_videos_beyond_max_open_videos():
    states = VideoStates(max_open=2)
    for video in ("a", "b", "c"):
        states.put(video, 0, object())
    with pytest.raises(ValueError, match=r"video 'a' came back after its state was dropped \(more than "
                                         r"MODEL.VIDEO.MAX_OPEN_VIDEOS=2 videos interleaved\); raise that limit"):
        states.get("a", 1)


# Config and checkpoints


def test_misspelt_config_key_on_the_command_line():
    with pytest.raises(KeyError, match=r"Non-existent config key: MODEL.WEIGTHS \(in the command-line overrides\): "
                                       r"expected a key declared by detectron2 or vss/config.py; "
                                       r"did you mean MODEL.WEIGHTS\?"):
        setup_cfg(TINY_CONFIG, ["MODEL.WEIGTHS", "model.pth"])


def test_config_override_without_a_value():
    with pytest.raises(ValueError, match=r"config overrides must be KEY VALUE pairs, got an odd number of items: "
                                         r"\['MODEL.DEVICE', 'cpu', 'SOLVER.BASE_LR'\]"):
        setup_cfg(TINY_CONFIG, CPU + ["SOLVER.BASE_LR"])


def test_misspelt_config_key_in_a_yaml_file(tmp_path):
    config = tmp_path / "typo.yaml"
    config.write_text(f"_BASE_: {TINY_CONFIG}\nSOLVER:\n  BASE_LRR: 0.1\n")
    with pytest.raises(KeyError, match=r"Non-existent config key: SOLVER.BASE_LRR \(in .*typo.yaml or its _BASE_ "
                                       r"files\): expected a key .*; did you mean SOLVER.BASE_LR\b"):
        setup_cfg(str(config))


def test_missing_checkpoint_file(tmp_path):
    missing = tmp_path / "model_final.pth"
    with pytest.raises(FileNotFoundError, match="MODEL.WEIGHTS must be a local checkpoint file") as e:
        VideoPredictor(setup_cfg(TINY_CONFIG, CPU + ["MODEL.WEIGHTS", str(missing)]))
    assert f"checkpoint {missing} does not exist" in str(e.value)


@pytest.mark.parametrize("suffix", [".pth", ".pkl"])
def test_truncated_checkpoint_file(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    torch.save({"model": {"w": torch.zeros(64, 64)}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or not a checkpoint") as e:
        VideoPredictor(setup_cfg(TINY_CONFIG, CPU + ["MODEL.WEIGHTS", str(path)]))
    assert f"checkpoint {path} cannot be read" in str(e.value) and "expected a .pth" in str(e.value)


# Demo input and outputs


@pytest.fixture(scope="module")
def demo():
    return load_script(REPO / "demo" / "demo.py")


def demo_error(demo, argv):
    """The message demo.main(argv) stops with (a user error: one line and status 2 from the script)."""
    with pytest.raises(demo.DemoError) as e:
        demo.main(argv)
    return str(e.value)


def test_demo_input_matching_no_file(demo, tmp_path):
    pattern = str(tmp_path / "frames" / "*.jpg")
    message = demo_error(demo, ["--config-file", TINY_CONFIG, "--input", pattern, "--output-dir", str(tmp_path)])
    assert f"input pattern {pattern!r} matches no file" in message


def test_demo_output_folder_not_writable(demo, tmp_path):
    # Tests run as root in CI, where permission bits do not stop writes: a regular file
    # where a folder is needed is the unwritable output every user can meet.
    folder = write_video(str(tmp_path), frames=1)
    blocker = tmp_path / "taken"
    blocker.write_text("a file, not a folder")
    message = demo_error(demo, ["--config-file", TINY_CONFIG, "--input", os.path.join(folder, "origin"),
                                "--output-dir", str(blocker / "out"), "--opts"] + CPU)
    assert f"cannot create output folder {blocker / 'out'}" in message


def test_prediction_folder_not_writable(tmp_path):
    write_video(str(tmp_path), frames=1)
    name = register(tmp_path)
    (record,) = DatasetCatalog.get(name)
    blocker = tmp_path / "taken"
    blocker.write_text("a file, not a folder")
    evaluator = VSSEvaluator(name, distributed=False, output_dir=str(blocker), save_predictions=True)
    with pytest.raises(OSError, match="TEST.VSS.SAVE_PREDICTIONS") as e:
        evaluator.process([record], [{"sem_seg": torch.zeros(NUM_CLASSES, H, W)}])
    assert f"cannot write the predicted labels of {record['file_name']} to {blocker}/v/00000.png" in str(e.value)

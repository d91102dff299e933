"""The synthetic video generator: layout, determinism, motion, spec handling and the CLI."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vss.data.datasets import load_vspw_layout, read_class_file
from vss.data.datasets.synthetic import SYNTHETIC_CLASSES, SYNTHETIC_COLORS
from vss.data.io import read_frame, read_label
from vss.data.synthetic import generate, render_video

from conftest import REPO, load_script
SMALL = dict(train_videos=2, val_videos=1, frames=6, height=48, width=64)
NUM_CLASSES = len(SYNTHETIC_CLASSES)


@pytest.fixture(scope="module")
def default_root(tmp_path_factory):
    """The dataset with the generator's defaults (8 + 4 videos of 20 frames at 120x160)."""
    root = str(tmp_path_factory.mktemp("synthetic") / "synthetic_vss")
    generate(root)
    return root


def raw_labels(root, video):
    mask_dir = os.path.join(root, "data", video, "mask")
    return np.stack([np.asarray(Image.open(os.path.join(mask_dir, n))) for n in sorted(os.listdir(mask_dir))])


def videos(root, split):
    with open(os.path.join(root, f"{split}.txt")) as f:
        return f.read().split()


def files(root):
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def miou(pairs):
    """Mean IoU over the classes present, of (prediction, truth) raw label maps."""
    n = NUM_CLASSES + 1
    conf = np.zeros((n, n), np.int64)
    for pred, true in pairs:
        conf += np.bincount(true.ravel().astype(np.int64) * n + pred.ravel(), minlength=n * n).reshape(n, n)
    inter = np.diag(conf)[1:]
    union = conf.sum(0)[1:] + conf.sum(1)[1:] - inter
    return (inter / np.maximum(union, 1))[union > 0].mean()


def test_layout_loads_with_the_vspw_loader(default_root):
    for split, n_videos in (("train", 8), ("val", 4)):
        records = load_vspw_layout(default_root, split)
        assert len(records) == n_videos * 20
        assert [r["frame_idx"] for r in records] == list(range(20)) * n_videos
        assert sorted({r["video_id"] for r in records}) == [f"{split}_{i:04d}" for i in range(n_videos)]
        assert all(r["height"] == 120 and r["width"] == 160 for r in records)
        assert all(os.path.isfile(r["sem_seg_file_name"]) for r in records)
    first = load_vspw_layout(default_root, "val")[0]
    assert os.path.basename(first["file_name"]) == "00000000.jpg"
    assert read_frame(first["file_name"]).shape == (120, 160, 3)
    names, colors, offset = read_class_file(default_root)
    assert names == SYNTHETIC_CLASSES and colors == [tuple(c) for c in SYNTHETIC_COLORS] and offset == 1
    train_ids = read_label(first["sem_seg_file_name"], NUM_CLASSES, offset)
    assert train_ids.min() >= 0 and train_ids.max() < NUM_CLASSES


def test_label_values_and_every_class_in_each_split(default_root):
    for split in ("train", "val"):
        values = np.concatenate([raw_labels(default_root, v).ravel() for v in videos(default_root, split)])
        present = set(np.unique(values).tolist())
        assert present == set(range(1, NUM_CLASSES + 1)), split
        # Objects are tens of pixels: each object class covers a visible share of the split.
        counts = np.bincount(values, minlength=NUM_CLASSES + 1)
        assert (counts[5:] / values.size > 0.003).all(), counts


def test_objects_move_in_every_frame(default_root):
    for video in videos(default_root, "train") + videos(default_root, "val"):
        labels = raw_labels(default_root, video)
        objects = labels >= 5
        changed = (objects[1:] != objects[:-1]).reshape(len(labels) - 1, -1).sum(1)
        assert (changed > 20).all(), (video, changed)


def test_background_pans_under_the_objects():
    out = render_video(np.random.default_rng(3), 12, 60, 80)
    pan, labels, canvas = out["pan"], out["labels"], out["canvas_labels"]
    steps = np.abs(np.diff(pan, axis=0)).sum(1)
    assert (steps >= 1).sum() >= 6 and steps.max() <= 3
    crops = np.stack([canvas[y:y + 60, x:x + 80] for y, x in pan])
    background = labels <= 4
    assert (labels[background] == crops[background]).all()
    assert (labels[~background] >= 5).all() and (~background).any()
    assert (crops[0] != crops[-1]).mean() > 0.02  # the scene under the objects shifts


def test_copying_old_labels_is_clearly_worse(default_root):
    for split in ("train", "val"):
        stacks = [raw_labels(default_root, v) for v in videos(default_root, split)]
        assert miou([(lab[t], lab[t]) for lab in stacks for t in range(len(lab))]) == 1.0
        copy5 = miou([(lab[t - 5], lab[t]) for lab in stacks for t in range(5, len(lab))])
        copy1 = miou([(lab[t - 1], lab[t]) for lab in stacks for t in range(1, len(lab))])
        assert copy5 < 0.6 and copy5 < copy1 < 0.9, (split, copy1, copy5)


def test_deterministic_given_the_seed(tmp_path):
    a, b, c = (str(tmp_path / n) for n in "abc")
    generate(a, **SMALL)
    generate(b, **SMALL)
    generate(c, **SMALL, seed=1)
    assert files(a) == files(b)  # labels and JPEG frames, bit for bit
    assert not np.array_equal(raw_labels(a, "train_0000"), raw_labels(c, "train_0000"))
    # Train and val videos come from different seeds.
    assert not np.array_equal(raw_labels(a, "train_0000"), raw_labels(a, "val_0000"))
    assert not np.array_equal(raw_labels(a, "train_0000"), raw_labels(a, "train_0001"))


def test_same_spec_is_a_no_op_and_other_specs_need_overwrite(tmp_path):
    root = str(tmp_path / "syn")
    assert generate(root, **SMALL)["generated"]
    label = os.path.join(root, "data", "train_0000", "mask", "00000005.png")
    stamp = os.stat(label).st_mtime_ns

    again = generate(root, **SMALL)
    assert not again["generated"] and again["frames"] == 18
    assert os.stat(label).st_mtime_ns == stamp

    with pytest.raises(FileExistsError, match=r"frames: 6 -> 4.*overwrite"):
        generate(root, **{**SMALL, "frames": 4})
    assert os.path.isfile(label)

    summary = generate(root, **{**SMALL, "frames": 4, "train_videos": 1}, overwrite=True)
    assert summary["generated"] and summary["videos"]["train"] == ["train_0000"]
    assert not os.path.exists(label) and not os.path.exists(os.path.join(root, "data", "train_0001"))
    assert len(load_vspw_layout(root, "train")) == 4


def test_refuses_folders_it_did_not_write(tmp_path):
    root = tmp_path / "other"
    root.mkdir()
    (root / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="no spec.json"):
        generate(str(root), **SMALL)
    with pytest.raises(FileExistsError, match="notes.txt"):
        generate(str(root), **SMALL, overwrite=True)
    assert (root / "notes.txt").read_text() == "keep me"


def test_bad_sizes_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="height must be an integer >= 32"):
        generate(str(tmp_path / "x"), height=10)
    with pytest.raises(ValueError, match="train_videos"):
        generate(str(tmp_path / "x"), train_videos=0)
    assert not (tmp_path / "x").exists()


def test_cli(tmp_path, capsys):
    root = str(tmp_path / "cli")
    script = REPO / "datasets" / "prepare_synthetic.py"
    args = ["--root", root, "--train-videos", "1", "--val-videos", "1", "--frames", "3",
            "--height", "40", "--width", "48"]
    done = subprocess.run([sys.executable, script, *args, "--seed", "2"], capture_output=True, text=True,
                          cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "wrote 6 frames" in done.stdout
    records = load_vspw_layout(root, "val")
    assert len(records) == 3 and records[0]["height"] == 40 and records[0]["width"] == 48

    # The other outcomes in-process: a second interpreter start costs seconds.
    cli = load_script(script)
    cli.main([*args, "--seed", "2"])
    assert "nothing to do" in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"seed: 2 -> 3.*--overwrite"):
        cli.main([*args, "--seed", "3"])
    cli.main([*args, "--seed", "3", "--overwrite"])
    assert "wrote 6 frames" in capsys.readouterr().out

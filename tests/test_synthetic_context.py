"""The synthetic context task: discs whose class colour shows in one frame of every P, the context
masks marking the pixels whose class only an earlier frame showed, their loading, and the
evaluator's and the runs' context metrics."""
import json
import os
from collections import defaultdict

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

import vss  # noqa: F401  (registers datasets)
from vss.data import synthetic
from vss.data.datasets.vspw import load_vspw_layout
from vss.data.synthetic import CLOAK_GRAYS, CONTEXT_COLORS, generate, render_video
from vss.engine import learning_curve
from vss.engine.trainer import EVALUATIONS
from vss.evaluation.vss_evaluator import CONTEXT_METRICS

from conftest import REPO, load_script
from test_evaluator import IGNORE, make_dataset, run

SIZE = (12, 60, 80)  # frames, height, width
PERIOD = 3
SCALE = min(SIZE[1:]) / 120  # the generator's size unit at this frame size


def record_cloaked(mp):
    """The list that every context-task object render_video creates from now on is appended to."""
    made = []

    class Recorded(synthetic._Cloaked):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    mp.setattr(synthetic, "_Cloaked", Recorded)
    return made


@pytest.fixture(scope="module")
def videos():
    """40 videos of the context task at SIZE: [(render_video's output, {layer index: its object})]."""
    out = []
    with pytest.MonkeyPatch.context() as mp:
        made = record_cloaked(mp)
        for seed in range(40):
            made.clear()
            video = render_video(np.random.default_rng([seed, 1, 0]), *SIZE, context=PERIOD)
            # the objects are drawn in a depth order of their own: find each layer's by its path
            objects = {}
            for i in range(1, len(video["layer_classes"])):
                matches = [o for o in made if np.array_equal(np.array(o.path), video["positions"][i])]
                assert len(matches) == 1 and matches[0].kind == video["layer_classes"][i]
                objects[i] = matches[0]
            assert len(objects) == len(made)
            out.append((video, objects))
    return out


def test_every_class_is_a_disc_of_one_size_range_and_speed(videos):
    radius, speed = defaultdict(list), defaultdict(list)
    h, w = SIZE[1:]
    ys, xs = np.mgrid[:h, :w]
    for video, objects in videos:
        for i, obj in objects.items():
            radius[obj.kind].append(obj.a)
            steps = np.abs(np.diff(video["positions"][i], axis=0)).sum(1)
            speed[obj.kind].append(steps.mean())
            for t in range(SIZE[0]):
                # its pixels: exactly the disc around its position that no nearer layer covers
                cx, cy = video["positions"][i, t]
                disc = (xs - cx) ** 2 + (ys - cy) ** 2 <= obj.a ** 2
                layer = video["layers"][t]
                np.testing.assert_array_equal(layer == i, disc & ~(layer > i))
    assert set(radius) == set(CONTEXT_COLORS)
    for kind in radius:
        # every class spans the same radius range (10 to 15 units) ...
        assert 10 * SCALE <= min(radius[kind]) < 11 * SCALE and 14 * SCALE < max(radius[kind]) <= 15 * SCALE
    # ... with the same mean, and moves as fast (the clean set's cars are twice a person's size and speed)
    means = [np.mean(radius[k]) for k in radius]
    assert max(means) / min(means) < 1.1
    speeds = [np.mean(speed[k]) for k in speed]
    assert max(speeds) / min(speeds) < 1.3, dict(zip(speed, speeds))


def test_class_colour_only_in_shown_frames_and_one_gray_look_otherwise(videos):
    colours = {k: np.array(c, np.float64) / sum(c) for k, c in CONTEXT_COLORS.items()}
    grays = defaultdict(list)
    shown_seen = hidden_seen = 0
    for video, objects in videos:
        for i, obj in objects.items():
            # one frame of every PERIOD, at a phase of the object's own
            first = int(np.argmax(obj.shown))
            assert first < PERIOD
            np.testing.assert_array_equal(obj.shown, (np.arange(SIZE[0]) - first) % PERIOD == 0)
            for t in range(SIZE[0]):
                pixels = video["images"][t][video["layers"][t] == i].astype(np.float64)
                if len(pixels) < 10:
                    continue
                mean = pixels.mean(0)
                if obj.shown[t]:
                    nearest = min(colours, key=lambda k: np.abs(mean / mean.sum() - colours[k]).sum())
                    assert nearest == obj.kind and np.ptp(mean) > 60, (t, obj.kind, mean)
                    shown_seen += 1
                else:
                    assert np.ptp(mean) < 5 and CLOAK_GRAYS[0] * 0.7 < mean.mean() < 255, (t, obj.kind, mean)
                    grays[obj.kind].append(mean.mean())
                    hidden_seen += 1
    assert shown_seen > 100 and hidden_seen > 200
    # the cloak looks the same whatever the class under it
    brightness = [np.mean(grays[k]) for k in CONTEXT_COLORS]
    assert np.ptp(brightness) < 6, brightness


def test_context_pixels_are_the_hidden_objects_an_earlier_frame_showed(videos):
    context = hidden_before_shown = 0
    for video, objects in videos:
        assert not video["context"][0].any()
        for t in range(SIZE[0]):
            needed = [i for i, o in objects.items() if not o.shown[t] and o.shown[:t].any()]
            np.testing.assert_array_equal(video["context"][t], np.isin(video["layers"][t], needed))
            context += video["context"][t].sum()
            never = [i for i, o in objects.items() if not o.shown[:t + 1].any()]
            hidden_before_shown += np.isin(video["layers"][t], never).sum()
    # both kinds of hidden pixels occur: those that need context and those no frame has explained yet
    assert context > 10000 and hidden_before_shown > 1000


def test_without_context_the_clean_and_effects_videos_are_unchanged(monkeypatch):
    made = record_cloaked(monkeypatch)
    for effects in (None, "effects"):
        for seed in range(2):
            plain = render_video(np.random.default_rng([seed, 0, 0]), *SIZE, effects)
            off = render_video(np.random.default_rng([seed, 0, 0]), *SIZE, effects, context=0)
            assert set(off) == set(plain)
            for key, value in plain.items():
                np.testing.assert_array_equal(off[key], value, err_msg=key)
            assert off["context"].shape == SIZE and not off["context"].any()
    assert not made
    on = render_video(np.random.default_rng([0, 0, 0]), *SIZE, context=PERIOD)
    assert made and not np.array_equal(on["images"], plain["images"])


def test_generate_writes_context_masks_only_for_the_context_task(tmp_path):
    small = dict(train_videos=1, val_videos=2, frames=4, height=40, width=48, seed=3)
    plain = generate(str(tmp_path / "plain"), **small)
    assert "context" not in plain["spec"]
    assert "context" not in json.loads((tmp_path / "plain" / "spec.json").read_text())
    assert not list((tmp_path / "plain").glob("data/*/context"))
    assert all("context_file_name" not in r for r in load_vspw_layout(str(tmp_path / "plain"), "val"))

    root = tmp_path / "ctx"
    summary = generate(str(root), context=PERIOD, **small)
    assert summary["spec"]["context"] == PERIOD
    assert json.loads((root / "spec.json").read_text())["context"] == PERIOD
    for split_code, (split, ids) in enumerate(summary["videos"].items()):
        for index, video in enumerate(ids):
            want = render_video(np.random.default_rng([3, split_code, index]), 4, 40, 48, context=PERIOD)["context"]
            names = sorted(os.listdir(root / "data" / video / "context"))
            assert names == [f"{t:08d}.png" for t in range(4)]
            for t, name in enumerate(names):
                mask = np.asarray(Image.open(root / "data" / video / "context" / name))
                assert mask.dtype == np.uint8
                np.testing.assert_array_equal(mask, np.where(want[t], 255, 0))
    records = load_vspw_layout(str(root), "val")
    assert len(records) == 8
    for r in records:
        stem = os.path.splitext(os.path.basename(r["file_name"]))[0]
        assert r["context_file_name"] == str(root / "data" / r["video_id"] / "context" / f"{stem}.png")
    assert sum(np.asarray(Image.open(r["context_file_name"])).any() for r in records) > 0

    assert not generate(str(root), context=PERIOD, **small)["generated"]
    with pytest.raises(FileExistsError, match=r"different spec \(context: 3 -> None\)"):
        generate(str(root), **small)  # the clean set is another dataset
    for bad in (1, -3, 2.5, True, "3"):
        with pytest.raises(ValueError, match=f"context must be an integer >= 2, got {bad!r}"):
            generate(str(tmp_path / "bad"), context=bad, **small)
    assert not (tmp_path / "bad").exists()


def write_context(root, video, masks):
    os.makedirs(os.path.join(root, "data", video, "context"), exist_ok=True)
    for k, mask in enumerate(masks):
        Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(
            os.path.join(root, "data", video, "context", f"{k:05d}.png"))


def test_evaluator_scores_the_context_pixels_apart(tmp_path):
    gt = [np.array([[0, 0, 1], [1, 2, 2]]), np.array([[1, 1, IGNORE], [0, 0, 2]])]
    pred = [np.array([[0, 1, 1], [1, 2, 0]]), np.array([[1, 0, 2], [0, 0, 2]])]
    masks = [np.array([[1, 1, 0], [0, 1, 1]]), np.array([[1, 0, 1], [0, 0, 0]])]
    name, plain_records = make_dataset(tmp_path, {"v": [g.astype(np.uint8) for g in gt]}, 3)
    plain = run(name, plain_records, pred, 3, vc_windows=())
    assert not set(CONTEXT_METRICS) & set(plain)

    write_context(tmp_path, "v", masks)
    records = DatasetCatalog.get(name)
    assert all(r["context_file_name"] for r in records)
    got = run(name, records, pred, 3, vc_windows=())
    # (gt, pred) at the 5 labelled context pixels (the sixth is ignore): (0,0), (0,1), (2,2), (2,0), (1,1).
    # IoU-c0 = 1 / (2 + 2 - 1), IoU-c1 = 1 / (1 + 2 - 1), IoU-c2 = 1 / (2 + 1 - 1).
    assert got["mIoU (context)"] == pytest.approx(100 * (1 / 3 + 1 / 2 + 1 / 2) / 3)
    assert got["pACC (context)"] == pytest.approx(100 * 3 / 5)
    # the whole frames' metrics are those without context masks
    assert {k: v for k, v in got.items() if k not in CONTEXT_METRICS} == pytest.approx(plain, nan_ok=True)

    os.remove(tmp_path / "data" / "v" / "context" / "00001.png")
    with pytest.raises(ValueError, match=r"context mask \S+/v/context/00001.png of frame \S+/v/origin/00001.png "
                                         r"does not exist: expected a 2x3 PNG"):
        run(name, records, pred, 3, vc_windows=())
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(tmp_path / "data" / "v" / "context" / "00001.png")
    with pytest.raises(ValueError, match=r"context/00001.png of frame \S+ is \(3, 3\): expected a 2x3 PNG"):
        run(name, records, pred, 3, vc_windows=())


def test_learning_curve_passes_the_context_metrics_through(tmp_path):
    results = [{"mIoU": 50.0, "WIoU": 49.0, "pACC": 90.0}, {"mIoU": 60.0, "WIoU": 59.0, "pACC": 91.0,
                                                            "mIoU (context)": 30.0, "pACC (context)": 40.0}]
    with open(tmp_path / EVALUATIONS, "w") as f:
        for done, r in zip((5, 10), results):
            f.write(json.dumps({"iter": done, "results": {"sem_seg": r}}) + "\n")
    assert learning_curve(str(tmp_path), metrics=("mIoU",)) == [
        {"iter": 5, "mIoU": 50.0}, {"iter": 10, "mIoU": 60.0, "mIoU (context)": 30.0, "pACC (context)": 40.0}]


def test_context_set_registered_and_written_by_the_cli(tmp_path, monkeypatch, capsys):
    for split in ("train", "val"):
        assert f"synthetic_vss_ctx_{split}" in DatasetCatalog.list()
        assert MetadataCatalog.get(f"synthetic_vss_ctx_{split}").dataset_root.endswith("synthetic_vss_ctx")
    cli = load_script(REPO / "datasets" / "prepare_synthetic.py")
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    args = ["--train-videos", "1", "--val-videos", "1", "--frames", "3", "--height", "40", "--width", "48"]
    cli.main(args + ["--context", "3"])
    assert "wrote 6 frames" in capsys.readouterr().out
    root = tmp_path / "synthetic_vss_ctx"
    assert json.loads((root / "spec.json").read_text())["context"] == 3
    assert sorted(os.listdir(root / "data" / "val_0000" / "context")) == [f"{t:08d}.png" for t in range(3)]
    assert not (tmp_path / "synthetic_vss").exists()
    with pytest.raises(SystemExit, match=r"context must be an integer >= 2, got 1"):
        cli.main(args + ["--context", "1", "--root", str(tmp_path / "bad")])

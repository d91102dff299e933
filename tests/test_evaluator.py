"""VSSEvaluator: confusion-matrix metrics and mVC_n against the VSPW definitions."""
import logging
import math
import os
import uuid
from collections import Counter

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.utils import comm
from PIL import Image

import vss  # noqa: F401  (registers datasets)
from vss.data.datasets import register_vspw_layout
from vss.data.synthetic import generate
from vss.data.video import build_video_test_loader
from vss import add_vss_config
from vss.engine import Trainer, setup_cfg
from vss.evaluation import VSSEvaluator
from vss.modeling.postprocess import labels_only
from vss.utils.flops import kind_flops

from conftest import REPO

IGNORE = 255


def make_dataset(root, videos, num_classes):
    """Write a VSPW-layout dataset and register it under a fresh name.

    videos: {video_id: [label map of train ids (255 ignore) or None for unlabelled]}.
    Masks are written raw (train id + 1, VSPW's offset); frames are tiny PNGs.
    """
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "val.txt"), "w") as f:
        f.write("\n".join(videos) + "\n")
    for video, labels in videos.items():
        os.makedirs(os.path.join(root, "data", video, "origin"))
        os.makedirs(os.path.join(root, "data", video, "mask"))
        for k, label in enumerate(labels):
            h, w = (2, 2) if label is None else label.shape
            Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(
                os.path.join(root, "data", video, "origin", f"{k:05d}.png"))
            if label is not None:
                raw = np.where(label == IGNORE, IGNORE, label.astype(np.int64) + 1).astype(np.uint8)
                Image.fromarray(raw).save(os.path.join(root, "data", video, "mask", f"{k:05d}.png"))
    name = f"test_vss_eval_{uuid.uuid4().hex[:8]}"
    classes = [f"c{i}" for i in range(num_classes)]
    colors = [(i, i, i) for i in range(num_classes)]
    register_vspw_layout(name, str(root), "val", classes, colors, label_offset=1)
    return name, DatasetCatalog.get(name)


def scores(pred, num_classes, rng=None):
    """Class scores whose argmax is `pred`; random below the winner when rng is given."""
    out = np.zeros((num_classes,) + pred.shape, np.float32)
    if rng is not None:
        out = rng.uniform(0, 0.9, out.shape).astype(np.float32)
    np.put_along_axis(out, pred[None].astype(np.int64), 1.0, axis=0)
    return {"sem_seg": torch.from_numpy(out)}


def run(name, records, preds, num_classes, batch=3, **kwargs):
    ev = VSSEvaluator(name, distributed=False, **kwargs)
    ev.reset()
    outs = [scores(p, num_classes) for p in preds]
    for i in range(0, len(records), batch):
        ev.process(records[i:i + batch], outs[i:i + batch])
    return ev.evaluate()["sem_seg"]


def reference(videos, preds_by_video, num_classes, windows):
    """Slow transcription of the definitions (IMPLEMENTATION_NOTES section 5).

    videos / preds_by_video: {video: {frame_idx: array}}; a frame missing from `videos`
    or mapped to None is unlabelled.
    """
    conf = np.zeros((num_classes, num_classes), np.int64)
    for video, frames in videos.items():
        for idx, gt in frames.items():
            if gt is None:
                continue
            pred = preds_by_video[video][idx]
            for y in range(gt.shape[0]):
                for x in range(gt.shape[1]):
                    if gt[y, x] != IGNORE:
                        conf[gt[y, x], pred[y, x]] += 1
    res = {}
    ious = {}
    for c in range(num_classes):
        tp = conf[c, c]
        fp = conf[:, c].sum() - tp
        fn = conf[c, :].sum() - tp
        if conf[c, :].sum() > 0:
            ious[c] = tp / (tp + fp + fn)
    total = conf.sum()
    res["mIoU"] = 100 * np.mean(list(ious.values()))
    res["WIoU"] = 100 * sum(conf[c, :].sum() / total * iou for c, iou in ious.items())
    res["pACC"] = 100 * np.trace(conf) / total
    for c in range(num_classes):
        res[f"IoU-c{c}"] = 100 * ious.get(c, math.nan)
    for n in windows:
        values = []
        for video, frames in videos.items():
            count = max(preds_by_video[video]) + 1
            for i in range(count - n):
                gts = [frames.get(i + j) for j in range(n)]
                if any(g is None for g in gts):
                    continue
                g = np.stack(gts)
                p = np.stack([preds_by_video[video][i + j] for j in range(n)])
                a = (g == g[0]).all(axis=0)
                agree = (p == p[0]).all(axis=0)
                values.append((a & agree).sum() / a.sum() if a.sum() else math.nan)
        res[f"mVC{n}"] = 100 * np.nanmean(values) if not all(np.isnan(values)) else math.nan
    return res


def assert_results(got, want):
    assert set(want) <= set(got)
    for key, value in want.items():
        if math.isnan(value):
            assert math.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-9), key


def coherent_video(rng, n_frames, shape, num_classes, flip=0.05):
    """Label maps that mostly persist between frames, so VC windows are not empty."""
    label = rng.integers(0, num_classes, shape)
    frames = []
    for _ in range(n_frames):
        flips = rng.random(shape) < flip
        label = np.where(flips, rng.integers(0, num_classes, shape), label)
        frames.append(label.astype(np.uint8))
    return frames


def test_matches_slow_reference_on_random_videos(tmp_path):
    rng = np.random.default_rng(0)
    num_classes, shape, windows = 4, (5, 6), (3, 5)
    lengths = {"v_long": 12, "v_short": 3, "v_equal": 5, "v_mid": 8, "v_unlabelled": 9}
    gts, preds = {}, {}
    for video, length in lengths.items():
        frames = coherent_video(rng, length, shape, num_classes)
        # Class 3 is only ever predicted, never in the ground truth: its IoU is NaN.
        frames = [np.where(f == 3, 0, f).astype(np.uint8) for f in frames]
        for f in frames:
            f[rng.random(shape) < 0.1] = IGNORE
        gts[video] = frames
        preds[video] = [np.where(rng.random(shape) < 0.15, rng.integers(0, num_classes, shape), f)
                        .clip(0, num_classes - 1).astype(np.uint8) for f in frames]
    gts["v_unlabelled"][4] = None
    name, records = make_dataset(tmp_path, gts, num_classes)
    # Drop a frame from the evaluation order: it counts as missing, like an unlabelled one.
    records = [r for r in records if not (r["video_id"] == "v_mid" and r["frame_idx"] == 3)]
    pred_list = [preds[r["video_id"]][r["frame_idx"]] for r in records]

    got = run(name, records, pred_list, num_classes, vc_windows=windows)

    seen_gt = {v: {} for v in gts}
    seen_pred = {v: {} for v in gts}
    for r, p in zip(records, pred_list):
        seen_gt[r["video_id"]][r["frame_idx"]] = gts[r["video_id"]][r["frame_idx"]]
        seen_pred[r["video_id"]][r["frame_idx"]] = p
    want = reference(seen_gt, seen_pred, num_classes, windows)
    assert math.isnan(want["IoU-c3"]) and not math.isnan(want["mVC5"])
    assert_results(got, want)


def test_hand_computed_two_classes(tmp_path):
    gt = [np.array([[0, 0], [1, 1]]), np.array([[0, 0], [1, 0]]), np.array([[0, 1], [1, 0]])]
    pred = [np.array([[0, 0], [1, 0]]), np.array([[0, 0], [0, 0]]), np.array([[1, 1], [1, 0]])]
    name, records = make_dataset(tmp_path, {"v": [g.astype(np.uint8) for g in gt]}, 2)
    res = run(name, records, pred, 2, vc_windows=(2, 3))
    # (gt, pred) counts over the 12 pixels: (0,0) 6, (0,1) 1, (1,0) 2, (1,1) 3.
    # IoU-c0 = 6 / (6 + 2 + 1) = 2/3; IoU-c1 = 3 / (3 + 1 + 2) = 1/2.
    assert res["IoU-c0"] == pytest.approx(100 * 2 / 3)
    assert res["IoU-c1"] == pytest.approx(100 / 2)
    assert res["mIoU"] == pytest.approx(100 * 7 / 12)
    # Ground-truth shares: class 0 7/12, class 1 5/12 -> 7/12 * 2/3 + 5/12 * 1/2 = 43/72.
    assert res["WIoU"] == pytest.approx(100 * 43 / 72)
    assert res["pACC"] == pytest.approx(100 * 9 / 12)
    # n=2, N=3: only the window at frames 0-1 (range(1)). GT stable at 3 pixels
    # (all but bottom-right), prediction stable at all but bottom-left -> 2/3.
    assert res["mVC2"] == pytest.approx(100 * 2 / 3)
    # n=3, N=3: range(0) gives no window.
    assert math.isnan(res["mVC3"])


def test_miou_over_classes_in_ground_truth_or_prediction(tmp_path):
    # 3 classes; class 2 is never in the ground truth but predicted at one labelled pixel and
    # at one ignore pixel (which counts nowhere).
    gt = [np.array([[0, 0, 1], [1, 1, IGNORE]]), np.array([[0, 0, 0], [1, 1, 1]])]
    pred = [np.array([[0, 2, 1], [1, 0, 2]]), np.array([[0, 0, 0], [1, 1, 0]])]
    name, records = make_dataset(tmp_path, {"v": [g.astype(np.uint8) for g in gt]}, 3)
    # (gt, pred) over the 11 labelled pixels: (0,0) 4, (0,2) 1, (1,1) 4, (1,0) 2.
    # IoU-c0 = 4 / (5 + 6 - 4) = 4/7; IoU-c1 = 4 / (6 + 4 - 4) = 2/3; class 2: TP 0, 1 predicted.
    ours = run(name, records, pred, 3, vc_windows=())
    release = run(name, records, pred, 3, vc_windows=(), miou_classes="gt_or_pred")
    assert ours["mIoU"] == pytest.approx(100 * (4 / 7 + 2 / 3) / 2)
    assert release["mIoU"] == pytest.approx(100 * (4 / 7 + 2 / 3) / 3)
    # the rest is one definition: ground-truth-weighted WIoU (the release's fwIoU), pACC, per class
    assert release["WIoU"] == ours["WIoU"] == pytest.approx(100 * (5 / 11 * 4 / 7 + 6 / 11 * 2 / 3))
    assert release["pACC"] == ours["pACC"] == pytest.approx(100 * 8 / 11)
    assert math.isnan(release["IoU-c2"]) and math.isnan(ours["IoU-c2"])
    assert release["IoU-c1"] == ours["IoU-c1"] == pytest.approx(100 * 2 / 3)
    # a class predicted only on ignore pixels is not averaged over
    only_on_ignore = [np.array([[0, 0, 1], [1, 1, 2]]), pred[1]]
    name2, records2 = make_dataset(tmp_path / "b", {"v": [g.astype(np.uint8) for g in gt]}, 3)
    assert run(name2, records2, only_on_ignore, 3, vc_windows=(), miou_classes="gt_or_pred")["mIoU"] == \
        pytest.approx(run(name2, records2, only_on_ignore, 3, vc_windows=())["mIoU"])
    with pytest.raises(ValueError, match="TEST.VSS.MIOU_CLASSES must be one of"):
        VSSEvaluator(name, miou_classes="pred")
    cfg = get_cfg()
    add_vss_config(cfg)
    assert Trainer.build_evaluator(cfg, name, str(tmp_path))._miou_classes == "gt"
    cfg.TEST.VSS.MIOU_CLASSES = "gt_or_pred"
    assert Trainer.build_evaluator(cfg, name, str(tmp_path))._miou_classes == "gt_or_pred"


def test_ignore_pixels_excluded_and_stable_ignore_counts_as_identical(tmp_path):
    gt = np.array([[0, IGNORE, 1]], np.uint8)
    frames = [gt, gt, np.array([[0, 1, 1]], np.uint8)]
    # The prediction is wrong only where the ground truth is ignore (frames 0 and 1).
    pred = [np.array([[0, 1, 1]]), np.array([[0, 0, 1]]), np.array([[0, 1, 1]])]
    name, records = make_dataset(tmp_path, {"v": frames}, 2)
    res = run(name, records, pred, 2, vc_windows=(2,))
    assert res["mIoU"] == 100 and res["pACC"] == 100 and res["WIoU"] == 100
    # Window 0-1: the ignore pixel stays ignore, so A holds all 3 pixels; the prediction
    # changes there, so VC = 2/3. (Window 1-2, where ignore turns into class 1, is the
    # last one and excluded by the official range.)
    assert res["mVC2"] == pytest.approx(100 * 2 / 3)


def test_raw_zero_is_ignored_with_vspw_offset(tmp_path):
    name, records = make_dataset(tmp_path, {"v": [np.array([[0, 1]], np.uint8)]}, 2)
    # Overwrite the mask with raw "others" (0) at the first pixel.
    Image.fromarray(np.array([[0, 2]], np.uint8)).save(records[0]["sem_seg_file_name"])
    res = run(name, records, [np.array([[1, 1]])], 2, vc_windows=(2,))
    assert res["pACC"] == 100 and math.isnan(res["IoU-c0"]) and res["IoU-c1"] == 100


def test_short_videos_give_no_window_and_last_window_is_dropped(tmp_path):
    same = np.zeros((1, 2), np.uint8)
    videos = {"two": [same] * 2, "three": [same] * 3}
    name, records = make_dataset(tmp_path, videos, 2)
    preds = [same] * 5
    assert math.isnan(run(name, records, preds, 2, vc_windows=(3,))["mVC3"])

    # Four frames, n=3: windows start in range(1) = {0}. The prediction is stable over
    # frames 0-2 (VC 1) and changes at frame 3 (window 1-3 would score 0).
    name, records = make_dataset(tmp_path / "four", {"four": [same] * 4}, 2)
    preds = [same, same, same, np.ones((1, 2), np.uint8)]
    assert run(name, records, preds, 2, vc_windows=(3,))["mVC3"] == 100


def test_unlabelled_frames_skip_windows_and_confusion(tmp_path):
    zero = np.zeros((2, 2), np.uint8)
    name, records = make_dataset(tmp_path, {"v": [zero, None, zero, zero]}, 2)
    assert records[1]["sem_seg_file_name"] is None
    # The prediction of the unlabelled frame is all wrong; it must not count.
    preds = [zero, np.ones((2, 2), np.uint8), zero, zero]
    res = run(name, records, preds, 2, vc_windows=(2,))
    assert res["pACC"] == 100 and res["mIoU"] == 100
    # Windows start at 0 and 1 (range(4 - 2)); both hold frame 1, so none is scored.
    assert math.isnan(res["mVC2"])


def test_distributed_equals_single_process(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    num_classes, shape, windows = 3, (4, 4), (2, 4)
    lengths = {"a": 6, "b": 3, "c": 7, "d": 5}
    gts = {v: coherent_video(rng, n, shape, num_classes) for v, n in lengths.items()}
    name, records = make_dataset(tmp_path, gts, num_classes)
    preds = [np.where(rng.random(shape) < 0.2, rng.integers(0, num_classes, shape),
                      gts[r["video_id"]][r["frame_idx"]]).astype(np.uint8) for r in records]
    single = run(name, records, preds, num_classes, vc_windows=windows)

    # Two ranks with whole videos each, interleaved differently from the single run.
    ranks = [{"c", "a"}, {"d", "b"}]
    evaluators = [VSSEvaluator(name, distributed=True, vc_windows=windows) for _ in ranks]
    for ev, videos in zip(evaluators, ranks):
        ev.reset()
        for r, p in sorted(zip(records, preds), key=lambda rp: rp[0]["video_id"] not in ("c", "d")):
            if r["video_id"] in videos:
                ev.process([r], [scores(p, num_classes, rng)])

    sent = []
    monkeypatch.setattr(comm, "is_main_process", lambda: False)
    monkeypatch.setattr(comm, "gather", lambda data, dst=0: sent.append(data) or [])
    assert evaluators[1].evaluate() == {}
    monkeypatch.setattr(comm, "is_main_process", lambda: True)
    monkeypatch.setattr(comm, "gather", lambda data, dst=0: [data] + sent)
    merged = evaluators[0].evaluate()["sem_seg"]
    assert merged.keys() == single.keys()
    for key in single:
        assert merged[key] == single[key] or (math.isnan(merged[key]) and math.isnan(single[key])), key
    assert not math.isnan(single["mVC4"])


def test_video_split_across_processes_is_an_error(tmp_path, monkeypatch):
    zero = np.zeros((1, 1), np.uint8)
    name, records = make_dataset(tmp_path, {"shared_video": [zero] * 4}, 2)
    evaluators = [VSSEvaluator(name, vc_windows=(2,)) for _ in range(2)]
    evaluators[0].process(records[:2], [scores(zero, 2)] * 2)
    evaluators[1].process(records[2:], [scores(zero, 2)] * 2)
    sent = []
    monkeypatch.setattr(comm, "is_main_process", lambda: False)
    monkeypatch.setattr(comm, "gather", lambda data, dst=0: sent.append(data) or [])
    evaluators[1].evaluate()
    monkeypatch.setattr(comm, "is_main_process", lambda: True)
    monkeypatch.setattr(comm, "gather", lambda data, dst=0: [data] + sent)
    with pytest.raises(ValueError, match="'shared_video'.*processes 0 and 1"):
        evaluators[0].evaluate()


def official_vc_perclip(pred_dir, data_dir, num_classes, windows=(8, 16)):
    """A transcription of the conventions of VSPW's official VC_perclip.py
    (../shared/reference/OFFICIAL_CODE_FACTS.md, section 3) over saved prediction PNGs.

    Ground truth: raw mask, 0 -> 255, minus 1, 254 -> 255. Predictions: read as they are
    and compared with those 0-based train ids. Frames: sorted(os.listdir) of the
    prediction folder; videos of <= 16 frames are skipped entirely. mIoU over the classes
    present in the ground truth; VC windows start at range(N - n).
    """
    conf = np.zeros((num_classes, num_classes), np.int64)
    vc = {n: [] for n in windows}
    for video in sorted(os.listdir(pred_dir)):
        names = sorted(os.listdir(os.path.join(pred_dir, video)))
        if len(names) <= 16:
            continue
        gts, preds = [], []
        for name in names:
            gt = np.array(Image.open(os.path.join(data_dir, "data", video, "mask", name))).astype(np.int64)
            gt[gt == 0] = 255
            gt = gt - 1
            gt[gt == 254] = 255
            pred = np.array(Image.open(os.path.join(pred_dir, video, name))).astype(np.int64)
            valid = (gt >= 0) & (gt < num_classes)
            conf += np.bincount(num_classes * gt[valid] + pred[valid],
                                minlength=num_classes ** 2).reshape(num_classes, num_classes)
            gts.append(gt)
            preds.append(pred)
        for n in windows:
            for i in range(len(names) - n):
                g, p = np.stack(gts[i:i + n]), np.stack(preds[i:i + n])
                same_gt = (g == g[0]).all(axis=0)
                same_pred = (p == p[0]).all(axis=0)
                vc[n].append((same_gt & same_pred).sum() / same_gt.sum())
    iou = np.diag(conf) / (conf.sum(0) + conf.sum(1) - np.diag(conf))
    present = conf.sum(1) > 0
    res = {"mIoU": 100 * iou[present].mean()}
    res.update({f"mVC{n}": 100 * np.mean(vc[n]) for n in windows})
    return res


def test_saved_predictions_are_what_the_official_script_reads(tmp_path):
    rng = np.random.default_rng(2)
    gts = {"vid_a": coherent_video(rng, 18, (3, 4), 3), "vid_b": coherent_video(rng, 20, (3, 4), 3)}
    gts["vid_a"][5][0, 0] = IGNORE
    name, records = make_dataset(tmp_path / "data", gts, 3)
    # Mostly right, so that a shifted reading gives a different mIoU.
    truth = [g for video in gts.values() for g in video]
    preds = [np.where((rng.random(g.shape) < 0.8) & (g != IGNORE), g, rng.integers(0, 3, g.shape)).astype(np.uint8)
             for g in truth]
    out = tmp_path / "pred"
    ours = run(name, records, preds, 3, vc_windows=(8, 16), output_dir=str(out), save_predictions=True)
    for r, p in zip(records, preds):
        written = np.asarray(Image.open(out / r["video_id"] / os.path.basename(r["sem_seg_file_name"])))
        np.testing.assert_array_equal(written, p)  # 0-based train ids, whatever the label offset
    official = official_vc_perclip(str(out), str(tmp_path / "data"), 3)
    assert 50 < official["mIoU"] < 100
    for key, value in official.items():
        assert ours[key] == pytest.approx(value, abs=1e-9), key
    with pytest.raises(ValueError, match="output_dir"):
        VSSEvaluator(name, save_predictions=True)


def test_missing_frame_is_a_gap_no_window_spans(tmp_path):
    # Frame 3 of 7 is deleted from the dataset; the prediction changes across the gap only.
    zero, one = np.zeros((2, 2), np.uint8), np.ones((2, 2), np.uint8)
    name, _ = make_dataset(tmp_path, {"v": [zero] * 7}, 2)
    os.remove(tmp_path / "data" / "v" / "origin" / "00003.png")
    records = DatasetCatalog.get(name)
    assert [r["frame_idx"] for r in records] == [0, 1, 2, 4, 5, 6]
    res = run(name, records, [zero, zero, zero, one, one, one], 2, vc_windows=(2, 3))
    # Windows 0-1, 1-2, 4-5 (2) and 0-2 (3) are stable; those holding frames 2 and 4 would
    # count as consecutive, and score 0, if the gap were closed up.
    assert res["mVC2"] == 100 and res["mVC3"] == 100
    assert res["pACC"] == pytest.approx(100 * 3 / 6)


def test_order_and_size_errors_name_the_video_and_file(tmp_path):
    zero = np.zeros((2, 2), np.uint8)
    name, records = make_dataset(tmp_path, {"vid_x": [zero] * 2, "vid_y": [zero]}, 2)
    ev = VSSEvaluator(name, distributed=False)
    ev.process(records[1:2], [scores(zero, 2)])
    with pytest.raises(ValueError, match="'vid_x'.*frame_idx 0.*after frame_idx 1"):
        ev.process(records[0:1], [scores(zero, 2)])

    ev.reset()
    ev.process(records[0:1], [scores(zero, 2)])
    ev.process(records[2:3], [scores(zero, 2)])
    with pytest.raises(ValueError, match="'vid_x' came back"):
        ev.process(records[1:2], [scores(zero, 2)])

    ev.reset()
    with pytest.raises(ValueError, match=r"00000.png is 3x2 but its label .*00000.png is 2x2"):
        ev.process(records[0:1], [scores(np.zeros((3, 2), np.uint8), 2)])
    with pytest.raises(ValueError, match=r"shape \(3, 2, 2\).*expected \(2, H, W\)"):
        ev.process(records[0:1], [scores(zero, 3)])

    # Rejected frames left no state behind: the video can still start at frame 0.
    ev.process(records[0:1], [scores(zero, 2)])
    records[1]["sem_seg_file_name"] = None  # no label to compare against: the video's size is used
    with pytest.raises(ValueError, match=r"'vid_x'.*frame_idx 1 .* is 3x3 but frame_idx 0 was 2x2"):
        ev.process(records[1:2], [scores(np.zeros((3, 3), np.uint8), 2)])


def test_label_outputs_give_the_metrics_of_score_outputs(tmp_path):
    rng = np.random.default_rng(3)
    num_classes, shape = 3, (4, 5)
    gts = {v: coherent_video(rng, 10, shape, num_classes) for v in ("v_a", "v_b")}
    name, records = make_dataset(tmp_path, gts, num_classes)
    preds = [np.where(rng.random(shape) < 0.2, rng.integers(0, num_classes, shape), gts[r["video_id"]][r["frame_idx"]])
             .astype(np.uint8) for r in records]
    results = []
    for outputs in ([scores(p, num_classes, rng) for p in preds],
                    [{"sem_seg_labels": torch.from_numpy(p).long()} for p in preds]):
        ev = VSSEvaluator(name, distributed=False, vc_windows=(3,))
        ev.process(records, outputs)
        results.append(ev.evaluate()["sem_seg"])
    assert results[0] == results[1] and not math.isnan(results[0]["mVC3"])


def test_bad_label_outputs_name_the_file(tmp_path):
    zero = np.zeros((2, 2), np.uint8)
    name, records = make_dataset(tmp_path, {"vid_x": [zero]}, 2)
    ev = VSSEvaluator(name, distributed=False)
    with pytest.raises(ValueError, match=r"labels for .*00000.png have shape \(1, 2, 2\): expected \(H, W\)"):
        ev.process(records, [{"sem_seg_labels": torch.zeros(1, 2, 2, dtype=torch.long)}])
    with pytest.raises(ValueError, match=r"labels for .*00000.png range over \[0, 2\]: expected class ids in \[0, 1\]"):
        ev.process(records, [{"sem_seg_labels": torch.tensor([[0, 2], [1, 0]])}])


# ---- the compute a model spent (vss.evaluation.compute) ---------------------------------------

COMPUTE_SIZE = (48, 64)


@pytest.fixture(scope="module")
def uneven_videos(tmp_path_factory):
    """A synthetic val set of two videos, of 5 and 4 frames (48x64)."""
    root = tmp_path_factory.mktemp("compute")
    generate(root, train_videos=1, val_videos=2, frames=5, height=COMPUTE_SIZE[0], width=COMPUTE_SIZE[1])
    for folder, ext in (("origin", "jpg"), ("mask", "png"), ("layers", "png")):
        (root / "data" / "val_0001" / folder / f"00000004.{ext}").unlink()
    return root


def compute_cfg(root, config, *opts):
    name = f"compute_val_{uuid.uuid4().hex[:8]}"
    return setup_cfg(str(REPO / "configs" / "synthetic" / config), [
        "DATASETS.FOLDERS", str([[name, str(root), "val"]]), "DATASETS.TEST", f"('{name}',)", "MODEL.DEVICE", "cpu",
        "INPUT.MIN_SIZE_TEST", str(COMPUTE_SIZE[0]), "DATALOADER.NUM_WORKERS", "0", *opts])


def traced_gflops(model):
    """{kind: GFLOPs} of one frame of each kind, run as the evaluation runs the model (labels only)."""
    with labels_only():
        return {kind: flops[""] / 1e9 for kind, flops in kind_flops(model, *COMPUTE_SIZE).items()}


def test_mpvss_reports_its_key_frames_and_what_they_cost(uneven_videos):
    cfg = compute_cfg(uneven_videos, "mpvss_query_flow.yaml", "MODEL.MPVSS.KEY_INTERVAL", "2")
    model = build_model(cfg)
    results = Trainer.test(cfg, model)["sem_seg"]
    # K=2: frames 0, 2, 4 of the 5-frame video and 0, 2 of the 4-frame one are key frames
    assert results["frames (key frame)"] == 5 and results["frames (propagated frame)"] == 4
    assert results["key_frame_share"] == 5 / 9
    cost = traced_gflops(model)
    assert cost["key frame"] > 2 * cost["propagated frame"] > 0
    assert results["GFLOPs/frame"] == pytest.approx((5 * cost["key frame"] + 4 * cost["propagated frame"]) / 9)


def test_an_adaptive_policy_reports_the_key_frames_it_chose(uneven_videos):
    cfg = compute_cfg(uneven_videos, "mpvss_query_flow.yaml", "MODEL.MPVSS.KEY_INTERVAL", "4",
                      "MODEL.MPVSS.KEY_POLICY", "adaptive", "MODEL.MPVSS.KEY_MIN_CONFIDENCE_RATIO", "1.0")
    torch.manual_seed(9)  # weights whose propagated frames lose confidence (0.1-0.2%): the policy adds key frames
    model = build_model(cfg).eval()
    ran = Counter()
    with torch.no_grad(), labels_only():
        for batch in build_video_test_loader(cfg, cfg.DATASETS.TEST[0]):
            model(batch)
            ran.update(model.frame_kinds)
    # a key frame every 4 frames would be frames 0, 4 and 0: the policy chose more
    assert sum(ran.values()) == 9 and ran["key frame"] > 3
    results = Trainer.test(cfg, model)["sem_seg"]
    assert {kind: results[f"frames ({kind})"] for kind in ran} == ran
    assert results["key_frame_share"] == ran["key frame"] / 9
    cost = traced_gflops(model)
    assert results["GFLOPs/frame"] == pytest.approx(
        (ran["key frame"] * cost["key frame"] + ran["propagated frame"] * cost["propagated frame"]) / 9)


def test_a_kind_fvcore_cannot_trace_leaves_only_gflops_out(uneven_videos, caplog):
    cfg = compute_cfg(uneven_videos, "mpvss_query_flow.yaml", "MODEL.MPVSS.KEY_INTERVAL", "2")
    model = build_model(cfg)

    def untraceable(module, inputs):  # as a custom kernel or an op the tracer does not know
        if torch.jit.is_tracing():
            raise RuntimeError("unsupported op: custom_flow")

    model.temporal.flow.register_forward_pre_hook(untraceable)  # runs on propagated frames only
    with caplog.at_level(logging.WARNING, logger="vss.evaluation.compute"):
        results = Trainer.test(cfg, model)["sem_seg"]
    assert "GFLOPs/frame" not in results and 0 <= results["mIoU"] <= 100
    assert results["frames (key frame)"] == 5 and results["frames (propagated frame)"] == 4
    assert results["key_frame_share"] == 5 / 9
    assert [r.getMessage() for r in caplog.records] == [
        "cannot count the FLOPs of a propagated frame of VideoSegmentor with fvcore (RuntimeError: unsupported op: "
        "custom_flow): the results leave GFLOPs/frame out"]


def test_a_per_frame_model_runs_one_kind_of_frame(uneven_videos):
    cfg = compute_cfg(uneven_videos, "mask2former_tiny.yaml")
    model = build_model(cfg)
    results = Trainer.test(cfg, model)["sem_seg"]
    assert results["frames (frame)"] == 9 and "key_frame_share" not in results
    assert results["GFLOPs/frame"] == traced_gflops(model)["frame"]
    quiet = Trainer.test(compute_cfg(uneven_videos, "mask2former_tiny.yaml", "TEST.VSS.REPORT_COMPUTE", "False"),
                         model)["sem_seg"]
    assert quiet["mIoU"] == results["mIoU"]
    assert not [k for k in quiet if k.startswith("frames") or "GFLOPs" in k]

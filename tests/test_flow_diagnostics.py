"""Flow diagnostics: units, per-query EPE by hand, and whole runs against the ground truth directly."""
import math
import os

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog

from vss.data.datasets import SYNTHETIC_CLASSES, SYNTHETIC_COLORS, register_flow_pairs, register_vspw_layout
from vss.data.synthetic import generate, ground_truth_flow
from vss.engine import Trainer, setup_cfg
from vss.data.mappers import FrameMapper
from vss.data.video import group_by_video
from vss.evaluation import VSSEvaluator
from vss.evaluation.flow_diagnostics import (FlowEPE, flow_diagnostics, flow_in_frame_pixels, true_grid_flow,
                                             winning_queries)
from vss.modeling.mpvss.warp import warp_masks

from conftest import REPO


def test_grid_units_become_frame_pixels():
    # a 16x20 grid over a 128x160 padded input: one grid unit is 8 input pixels
    grid = torch.empty(1, 2, 16, 20)
    grid[:, 0], grid[:, 1] = 1.0, 0.5
    same = flow_in_frame_pixels(grid, (128, 160), (120, 160), (120, 160))
    assert same.shape == (1, 2, 120, 160)
    assert torch.allclose(same[0, 0], torch.full((120, 160), 8.0))
    assert torch.allclose(same[0, 1], torch.full((120, 160), 4.0))
    # the input was the frame resized x2: frame pixels are half as many
    half = flow_in_frame_pixels(grid, (128, 160), (120, 160), (60, 80))
    assert half.shape == (1, 2, 60, 80)
    assert torch.allclose(half[0, 0], torch.full((60, 80), 4.0))
    assert torch.allclose(half[0, 1], torch.full((60, 80), 2.0))


def test_a_known_shift_gives_zero_error():
    grid = torch.empty(3, 2, 16, 20)
    grid[:, 0], grid[:, 1] = -0.75, 0.25
    flow = flow_in_frame_pixels(grid, (128, 160), (120, 160), (120, 160))
    gt = np.zeros((120, 160, 2), np.float32)
    gt[..., 0], gt[..., 1] = -6.0, 2.0
    valid = np.ones((120, 160), bool)
    epe = FlowEPE()
    epe.add(flow, gt, valid, gap=3, owner=torch.randint(0, 3, (120, 160)))
    result = epe.summary()
    assert result["EPE"] == pytest.approx(0.0, abs=1e-5)
    assert result["EPE_moving"] == pytest.approx(0.0, abs=1e-5)
    assert math.isnan(result["EPE_static"])  # every pixel moves
    assert result["pixels_moving"] == 120 * 160
    assert list(result["gaps"]) == [3]


def test_per_query_epe_by_hand():
    # 2x2 frame: query 0 owns the left column, query 1 the right; one invalid pixel
    flow = torch.zeros(2, 2, 2, 2)
    flow[0, 0] = 3.0  # query 0: dx = 3
    flow[1, 1] = -4.0  # query 1: dy = -4
    owner = torch.tensor([[0, 1], [0, 1]])
    gt = np.zeros((2, 2, 2), np.float32)
    gt[0, 0] = (3.0, 0.0)  # query 0 exact: 0; moving
    gt[1, 0] = (0.0, 0.0)  # query 0 moves a static pixel: 3; static
    gt[0, 1] = (0.0, -1.0)  # query 1: |(0, -4) - (0, -1)| = 3; moving
    gt[1, 1] = (0.3, 0.0)  # invalid
    valid = np.array([[True, True], [True, False]])
    objects = np.array([[False, True], [True, True]])  # the invalid one does not count
    epe = FlowEPE()
    epe.add(flow, gt, valid, gap=1, owner=owner, objects=objects)
    # a second frame at another gap, one map for every pixel (optical flow): errors 1, 1, 1, 1
    epe.add(torch.ones(2, 2, 2) * torch.tensor([1.0, 0.0])[:, None, None], np.zeros((2, 2, 2), np.float32),
            np.ones((2, 2), bool), gap=2)
    result = epe.summary()
    assert result["gaps"][1] == pytest.approx({"EPE": 2.0, "EPE_moving": 1.5, "EPE_static": 3.0, "EPE_objects": 3.0,
                                               "pixels_moving": 2, "pixels_objects": 2})
    assert result["gaps"][2] == pytest.approx({"EPE": 1.0, "EPE_moving": math.nan, "EPE_static": 1.0,
                                               "EPE_objects": math.nan, "pixels_moving": 0, "pixels_objects": 0},
                                              nan_ok=True)
    # pixel-weighted over both frames: (0 + 3 + 3 + 4 * 1) / 7
    assert result["EPE"] == pytest.approx(10 / 7)
    assert result["EPE_static"] == pytest.approx((3 + 4) / 5)


def test_per_class_epe_by_hand():
    # classes a, b, c; errors 0 | 3 on the top row, 3 | invalid below; labels a b / b ignore
    flow = torch.zeros(2, 2, 2)
    gt = np.zeros((2, 2, 2), np.float32)
    gt[0, 1] = gt[1, 0] = (3.0, 0.0)
    valid = np.array([[True, True], [True, False]])
    epe = FlowEPE(class_names=("a", "b", "c"))
    epe.add(flow, gt, valid, gap=1, labels=np.array([[0, 1], [1, 255]]))
    epe.add(flow, np.full((2, 2, 2), 4.0, np.float32), np.ones((2, 2), bool), gap=2)  # no labels: no class sums
    per_class = epe.summary()["EPE_classes"]
    assert list(per_class) == ["a", "b", "c"]
    assert per_class["a"] == pytest.approx(0.0) and per_class["b"] == pytest.approx(3.0)
    assert math.isnan(per_class["c"])
    with pytest.raises(ValueError, match=r"labels \(3, 3\) and validity \(2, 2\) disagree"):
        epe.add(flow, gt, valid, gap=1, labels=np.zeros((3, 3), np.int64))


def test_query_flows_need_an_owner_map():
    with pytest.raises(ValueError, match=r"2 query flows need an \(H, W\) = \(2, 2\) owner map, got None"):
        FlowEPE().add(torch.zeros(2, 2, 2, 2), np.zeros((2, 2, 2), np.float32), np.ones((2, 2), bool), gap=1)


def test_winning_queries_by_hand():
    # query 0: sure of class 0; query 1: unsure (P = 0.5 at best); void last
    class_logits = torch.log(torch.tensor([[0.9, 0.05, 0.05], [0.5, 0.25, 0.25]]))
    mask_logits = torch.zeros(2, 1, 3)
    mask_logits[0, 0] = torch.tensor([10.0, -10.0, 0.0])
    mask_logits[1, 0] = torch.tensor([0.0, 0.0, 10.0])
    # scores: q0 = 0.9 * (1, 0, 0.5), q1 = 0.5 * (0.5, 0.5, 1)
    assert winning_queries(class_logits, mask_logits).tolist() == [[0, 1, 1]]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Two 7-frame 64x96 validation videos; the test size (120) resizes them, as a real set may be."""
    root = str(tmp_path_factory.mktemp("diagnostics") / "synthetic")
    generate(root, train_videos=1, val_videos=2, frames=7, height=64, width=96)
    name = "test_flow_diagnostics_val"
    if name not in DatasetCatalog.list():
        register_vspw_layout(name, root, "val", SYNTHETIC_CLASSES, SYNTHETIC_COLORS)
    return name, root


def direct_epe(root, videos, flow, max_gap):
    """Mean ||flow - gt|| over valid, moving and object pixels, from ground_truth_flow and the labels directly."""
    errors, moving, objects = [], [], []
    for video in videos:
        for key in range(0, 7, max_gap):
            for t in range(key + 1, min(key + max_gap + 1, 7)):
                gt, valid = ground_truth_flow(root, video, t, key)
                error = np.linalg.norm(np.asarray(flow) - gt, axis=-1)
                errors.append(error[valid])
                moving.append(error[valid & (np.linalg.norm(gt, axis=-1) > 0.5)])
                # raw label = class index + 1; the object classes are the last four
                label = cv2.imread(os.path.join(root, "data", video, "mask", f"{t:08d}.png"), cv2.IMREAD_UNCHANGED)
                objects.append(error[valid & (label >= 5) & (label <= 8)])
    return [np.concatenate(e).mean() for e in (errors, moving, objects)]


@pytest.mark.parametrize("variant, grid_flow", [("copy", 0.0), ("query_learned", 1.0)])
def test_whole_run_matches_the_ground_truth_directly(dataset, variant, grid_flow):
    """Copy: zero flow. An untrained query-learned model: the official fusion start, 1 grid unit in x and y
    for every query, i.e. 8 input pixels = 8 * 64 / 120 frame pixels (the 64x96 frames are resized to 120x180)."""
    name, root = dataset
    cfg = setup_cfg(str(REPO / f"configs/synthetic/mpvss_{variant}.yaml"),
                    ["MODEL.WEIGHTS", "", "DATASETS.TEST", f"('{name}',)", "MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    model = Trainer.build_model(cfg)
    result = flow_diagnostics(model, cfg, name, max_gap=4)
    shift = grid_flow * 8 * 64 / 120
    videos = sorted({r["video_id"] for r in DatasetCatalog.get(name)})
    expected, expected_moving, expected_objects = direct_epe(root, videos, (shift, shift), max_gap=4)
    assert result["EPE"] == pytest.approx(expected, rel=1e-4)
    assert result["EPE_moving"] == pytest.approx(expected_moving, rel=1e-4)
    assert result["EPE_objects"] == pytest.approx(expected_objects, rel=1e-4)
    assert result["pixels_objects"] > 0
    assert sorted(result["gaps"]) == [1, 2, 3, 4]
    assert model.training  # left as it was found


def test_a_model_without_flow_is_refused(dataset):
    name, _ = dataset
    cfg = setup_cfg(str(REPO / "configs/synthetic/mask2former_tiny.yaml"), ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"])
    model = Trainer.build_model(cfg)
    with pytest.raises(ValueError, match="neither an MPVSS model"):
        flow_diagnostics(model, cfg, name)


def test_flownets_agrees_with_the_flow_evaluator(dataset):
    """With max_gap 1 the diagnostics see every (t, t - 1) pair: FlowEvaluator's gap-1 pairs, another path."""
    name, root = dataset
    pairs = "test_flow_diagnostics_flow_val"
    if pairs not in DatasetCatalog.list():
        register_flow_pairs(pairs, root, "val", max_gap=2, both_directions=False)
    cfg = setup_cfg(str(REPO / "configs/synthetic/flownets_pretrain.yaml"),
                    ["MODEL.WEIGHTS", "", "DATASETS.TEST", f"('{pairs}',)", "MODEL.DEVICE", "cpu",
                     "DATALOADER.NUM_WORKERS", 0])
    torch.manual_seed(0)
    model = Trainer.build_model(cfg)
    model.eval()
    expected = Trainer.test(cfg, model)["flow"]
    result = flow_diagnostics(model, cfg, name, max_gap=1)
    assert list(result["gaps"]) == [1]
    assert result["EPE"] == pytest.approx(expected["EPE_gap1"], rel=1e-5)
    assert result["EPE"] != pytest.approx(expected["EPE_zero_gap1"], rel=1e-2)  # a real flow, not zero


def test_true_flow_moves_the_key_labels_onto_the_frame(dataset):
    """Key-frame labels as one-hot masks over the padded, resized input, warped with true_grid_flow, land on
    the frame's labels: units, resizing and padding are right. Zero flow does visibly worse."""
    name, root = dataset
    video = sorted({r["video_id"] for r in DatasetCatalog.get(name)})[0]
    frame_size, image_size, padded = (64, 96), (120, 180), (128, 192)

    def resized(array):  # frame -> model input, as the key frame's masks are
        return cv2.resize(array.astype(np.uint8), image_size[::-1], interpolation=cv2.INTER_NEAREST_EXACT)

    def labels(t):
        return resized(cv2.imread(os.path.join(root, "data", video, "mask", f"{t:08d}.png"), cv2.IMREAD_UNCHANGED))

    key = torch.from_numpy(labels(0)).long()
    one_hot = torch.nn.functional.one_hot(key, 9).permute(2, 0, 1).float() * 20 - 10
    masks = torch.nn.functional.pad(one_hot, (0, padded[1] - image_size[1], 0, padded[0] - image_size[0]))[None]
    gt, valid = ground_truth_flow(root, video, 4, 0)
    assert gt.shape[:2] == frame_size
    valid = resized(valid) > 0
    agreement = {}
    for case, flow in (("true", true_grid_flow(gt, image_size, padded)), ("zero", torch.zeros(1, 2, *padded))):
        assert flow.shape == (1, 2, *padded)
        warped = warp_masks(masks, flow[None])[0, :, :image_size[0], :image_size[1]].argmax(0).numpy()
        agreement[case] = (warped == labels(4))[valid].mean()
    assert agreement["true"] >= 0.97, agreement
    assert agreement["zero"] < agreement["true"] - 0.05, agreement


@pytest.mark.parametrize("variant", ["copy", "query_learned"])
def test_propagation_scores_equal_the_models_own_inference(dataset, variant, monkeypatch):
    """With one key frame per video (max_gap 6 on 7 frames), the "flow" propagation is exactly what the model
    predicts at KEY_INTERVAL 7 on frames 1..6. Given a "ground truth" equal to the untrained query-learned
    model's own flow (1 grid unit = 8 * 64 / 120 frame pixels in x and y), "true flow" scores the same."""
    name, _ = dataset
    cfg = setup_cfg(str(REPO / f"configs/synthetic/mpvss_{variant}.yaml"),
                    ["MODEL.WEIGHTS", "", "DATASETS.TEST", f"('{name}',)", "MODEL.DEVICE", "cpu",
                     "MODEL.MPVSS.KEY_INTERVAL", 7])
    torch.manual_seed(0)
    model = Trainer.build_model(cfg)
    result = flow_diagnostics(model, cfg, name, max_gap=6)["propagation"]
    model.eval()
    mapper, expected = FrameMapper(cfg, is_train=False), VSSEvaluator(name, distributed=False, vc_windows=())
    with torch.no_grad():
        for records in group_by_video(DatasetCatalog.get(name)).values():
            for record in records:
                output = model([mapper(record)])[0]
                if record["frame_idx"] > 0:
                    expected.process([record], [output])
    expected = expected.evaluate()["sem_seg"]
    assert result["flow"]["mIoU"] == pytest.approx(expected["mIoU"], abs=1e-9)
    assert result["flow"]["IoU-car"] == pytest.approx(expected["IoU-car"], abs=1e-9, nan_ok=True)
    if variant == "query_learned":
        from vss.evaluation import flow_diagnostics as module

        def as_the_model_moves(root, video, frame, key_frame):
            gt, valid = ground_truth_flow(root, video, frame, key_frame)
            return np.full_like(gt, 8 * 64 / 120), valid

        monkeypatch.setattr(module, "ground_truth_flow", as_the_model_moves)
        result = flow_diagnostics(model, cfg, name, max_gap=6)["propagation"]
        assert result["true flow"]["pACC"] == pytest.approx(result["flow"]["pACC"], abs=1e-9)
        assert result["true flow"]["mIoU"] == pytest.approx(result["flow"]["mIoU"], abs=1e-9)

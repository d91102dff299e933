"""FlowEvaluator on hand-computed cases."""

import pytest
import torch

from vss.evaluation import FlowEvaluator


def item(gt, valid, gap):
    return {"image_id": f"v/{gap}", "gap": gap, "flow": torch.tensor(gt, dtype=torch.float32),
            "flow_valid": torch.tensor(valid)}


def test_epe_outliers_zero_flow_and_gaps():
    # pair 1 (gap 1), 1x3 pixels: gt (10, 0), (0, 0), (3, 4); the middle pixel is invalid
    gt1 = [[[10.0, 0.0, 3.0]], [[0.0, 0.0, 4.0]]]
    pred1 = [[[14.0, 50.0, 3.0]], [[3.0, 50.0, 4.0]]]  # EPE 5 (outlier: > 3 and > 0.5), -, 0
    # pair 2 (gap 2), 1x2: gt (100, 0) predicted (104, 0): EPE 4 > 3 but < 5% of 100 -> not an outlier;
    # gt (0, 1) predicted (0, 0): EPE 1
    gt2 = [[[100.0, 0.0]], [[0.0, 1.0]]]
    pred2 = [[[104.0, 0.0]], [[0.0, 0.0]]]
    evaluator = FlowEvaluator("pairs", distributed=False)
    evaluator.reset()
    evaluator.process([item(gt1, [[True, False, True]], 1), item(gt2, [[True, True]], 2)],
                      [{"flow": torch.tensor(pred1)}, {"flow": torch.tensor(pred2)}])
    res = evaluator.evaluate()["flow"]
    assert res["EPE"] == pytest.approx((5 + 0 + 4 + 1) / 4)
    assert res["Fl"] == pytest.approx(100 * 1 / 4)
    assert res["EPE_zero"] == pytest.approx((10 + 5 + 100 + 1) / 4)
    assert res["EPE_gap1"] == pytest.approx(2.5) and res["EPE_zero_gap1"] == pytest.approx(7.5)
    assert res["EPE_gap2"] == pytest.approx(2.5) and res["EPE_zero_gap2"] == pytest.approx(50.5)
    evaluator.reset()
    assert evaluator.evaluate() == {}


def test_errors_name_the_pair():
    evaluator = FlowEvaluator("pairs", distributed=False)
    with pytest.raises(ValueError, match=r"input v/1 lacks \['flow_valid'\]"):
        evaluator.process([{"image_id": "v/1", "gap": 1, "flow": torch.zeros(2, 2, 2)}], [{"flow": torch.zeros(2, 2, 2)}])
    with pytest.raises(ValueError, match=r"pair v/1: predicted flow \(2, 3, 2\)"):
        evaluator.process([item([[[0.0, 0.0]]] * 2, [[True, True]], 1)], [{"flow": torch.zeros(2, 3, 2)}])

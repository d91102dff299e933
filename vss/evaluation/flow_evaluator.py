"""Optical-flow metrics over flow-pair datasets: EPE, Fl outlier rate, per gap.

Over every valid ground-truth pixel of every pair (pixels, not pairs, are averaged):

- EPE: mean end-point error ||flow - gt||_2, in pixels of the frame;
- Fl: percentage of outliers, pixels whose EPE exceeds both 3 pixels and 5% of the
  ground-truth flow's length (KITTI 2015's Fl-all);
- EPE_zero: the EPE a zero flow would get (mean ||gt||), the reference a flow must beat;
- EPE_gap<g> / EPE_zero_gap<g>: the same over the pairs whose frames are g frames apart
  (g = frame_idx - key_frame_idx, negative when the key frame is later).

Inputs carry the ground truth ("flow" (2, H, W), "flow_valid" (H, W), and "gap"), as the
flow-pair mapper gives them; outputs are {"flow": (2, H, W)} at the same size.
"""
import itertools
import logging
from collections import OrderedDict, defaultdict

import torch
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import create_small_table

logger = logging.getLogger(__name__)

OUTLIER_PIXELS = 3.0
OUTLIER_RATIO = 0.05


class FlowEvaluator(DatasetEvaluator):
    def __init__(self, dataset_name=None, distributed=True):
        self._dataset_name = dataset_name
        self._distributed = distributed
        self.reset()

    def reset(self):
        # gap -> [valid pixels, sum of EPE, outliers, sum of ||gt||]
        self._sums = defaultdict(lambda: [0, 0.0, 0, 0.0])

    def process(self, inputs, outputs):
        for record, output in zip(inputs, outputs):
            name = record.get("image_id", record.get("file_name", "?"))
            missing = [k for k in ("flow", "flow_valid", "gap") if k not in record]
            if missing:
                raise ValueError(f"FlowEvaluator: input {name} lacks {missing}; evaluate a flow-pair dataset "
                                 "(its mapper adds the ground truth)")
            gt = record["flow"].to(torch.float64)
            valid = record["flow_valid"].to(torch.bool)
            pred = output["flow"].detach().to("cpu", torch.float64)
            if pred.shape != gt.shape or valid.shape != gt.shape[1:]:
                raise ValueError(f"FlowEvaluator: pair {name}: predicted flow {tuple(pred.shape)}, ground truth "
                                 f"{tuple(gt.shape)} and validity {tuple(valid.shape)} must agree as (2, H, W) "
                                 "and (H, W)")
            epe = torch.linalg.vector_norm(pred - gt, dim=0)[valid]
            length = torch.linalg.vector_norm(gt, dim=0)[valid]
            outliers = (epe > OUTLIER_PIXELS) & (epe > OUTLIER_RATIO * length)
            sums = self._sums[int(record["gap"])]
            sums[0] += int(valid.sum())
            sums[1] += float(epe.sum())
            sums[2] += int(outliers.sum())
            sums[3] += float(length.sum())

    def evaluate(self):
        sums = dict(self._sums)
        if self._distributed:
            comm.synchronize()
            gathered = comm.gather(sums, dst=0)
            if not comm.is_main_process():
                return {}
            sums = defaultdict(lambda: [0, 0.0, 0, 0.0])
            for part in gathered:
                for gap, values in part.items():
                    sums[gap] = [a + b for a, b in zip(sums[gap], values)]
        if not sums or not sum(v[0] for v in sums.values()):
            logger.warning("FlowEvaluator: no valid ground-truth pixel was evaluated on %s", self._dataset_name)
            return {}
        pixels, epe, outliers, length = (sum(column) for column in zip(*sums.values()))
        res = OrderedDict(EPE=epe / pixels, Fl=100.0 * outliers / pixels, EPE_zero=length / pixels)
        for gap in sorted(sums):
            n = sums[gap][0]
            if n:
                res[f"EPE_gap{gap}"] = sums[gap][1] / n
                res[f"EPE_zero_gap{gap}"] = sums[gap][3] / n
        logger.info("Flow evaluation on %s (%d valid pixels):\n%s", self._dataset_name, pixels,
                    create_small_table(dict(itertools.islice(res.items(), 3))))
        return {"flow": res}

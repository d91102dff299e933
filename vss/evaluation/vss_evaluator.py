"""Video semantic segmentation metrics: mIoU, WIoU, pixel accuracy and mVC_n (VSPW).

Definitions (VSPW's evaluation scripts):

- One confusion matrix over every labelled pixel of every labelled frame; ground-truth
  ignore pixels (255) are left out. IoU_c = TP / (TP + FP + FN). mIoU is the mean IoU
  over the classes that occur in the ground truth; WIoU weighs each of those classes by
  its share of ground-truth pixels; pACC = TP / labelled pixels.
- `miou_classes="gt_or_pred"` (TEST.VSS.MIOU_CLASSES) averages instead over the classes
  in the ground truth or the prediction (of labelled pixels), as the MPVSS release's
  evaluator does (O: mask2former/evaluation/vspw_seg_evaluation.py:141-152): a class only
  predicted counts with IoU 0. Its per-class IoU stays NaN there (as the release reports
  it), and WIoU and pACC do not change (the release's fwIoU is this WIoU).
- mVC_n: for a video of N frames, windows of n consecutive frames start at
  i in range(N - n) (the official script stops one window short; kept for comparable
  numbers, so a video of N <= n frames has no window). A = pixels whose ground truth
  is identical across the window, P = the same for the prediction;
  VC = |A and P| / |A| (NaN when A is empty). mVC_n = nanmean over all windows of all
  videos, NaN when there is none.

"Identical ground truth" compares the label maps as read by `read_label`: a pixel
that is ignore (255) in every frame of a window is identical, as in the official
script, which compares raw values. One difference: raw 0 ("others") and raw 255 both
read as ignore with VSPW's offset, so a pixel switching between those two counts as
identical here and not there.

Context pixels: a frame whose record has a `context_file_name` (the synthetic context task,
vss/data/synthetic.py) adds its pixels marked 255 there to a second confusion matrix, from which
"mIoU (context)" and "pACC (context)" are computed the same way: how well the model knows the
class of pixels that only other frames show. They are reported only where such files exist.

Streaming: frames of a video come in frame order and whole videos per process. A
window is scored when a later frame of its video arrives, which gives exactly the
official range, so only the last max(n) frames of the open video are kept. Frame
indices must increase but may skip: a missing frame acts like an unlabelled one, and
any window holding an unlabelled or missing frame is skipped.
"""
import itertools
import logging
import math
import os
from collections import Counter, OrderedDict, deque

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import create_small_table
from PIL import Image
from tabulate import tabulate

from ..data.io import IGNORE_LABEL, read_label
from .compute import frame_kinds, measured_model, report

logger = logging.getLogger(__name__)


MIOU_CLASSES = ("gt", "gt_or_pred")
# the metrics of context pixels, present only for data with context masks (module doc)
CONTEXT_METRICS = ("mIoU (context)", "pACC (context)")


def confusion_scores(conf, miou_classes="gt"):
    """mIoU, WIoU, pACC and the per-class IoU ("iou", NaN for classes not in the ground truth) of a
    confusion matrix (rows: ground truth, columns: prediction); `miou_classes` as TEST.VSS.MIOU_CLASSES."""
    tp = np.diag(conf).astype(np.float64)
    gt_pixels = conf.sum(axis=1).astype(np.float64)
    pred_pixels = conf.sum(axis=0).astype(np.float64)
    present = gt_pixels > 0
    total = gt_pixels.sum()
    iou = np.full(len(conf), math.nan)
    iou[present] = tp[present] / (gt_pixels + pred_pixels - tp)[present]

    res = OrderedDict()
    averaged = present | (pred_pixels > 0) if miou_classes == "gt_or_pred" else present
    res["mIoU"] = 100 * iou[present].sum() / averaged.sum() if present.any() else math.nan
    res["WIoU"] = 100 * (gt_pixels[present] / total * iou[present]).sum() if total else math.nan
    res["pACC"] = 100 * tp.sum() / total if total else math.nan
    res["iou"] = iou
    return res


class VSSEvaluator(DatasetEvaluator):
    """Confusion-matrix metrics and video consistency over a video dataset."""

    def __init__(self, dataset_name, distributed=True, output_dir=None, vc_windows=(8, 16),
                 save_predictions=False, miou_classes="gt", report_compute=True):
        """
        Args:
            dataset_name (str): registered dataset; its metadata gives `stuff_classes` and
                `label_offset` (raw PNG value = train id + offset).
            distributed (bool): gather results from all processes; only the main one reports.
            output_dir (str): where `save_predictions` writes `<video_id>/<frame stem>.png`.
            vc_windows (iterable[int]): window lengths n of mVC_n.
            save_predictions (bool): write predicted label PNGs as VSPW's official scripts
                (VC_perclip.py) read them: `<output_dir>/<video_id>/<frame stem>.png`, uint8,
                0-based train ids, whatever the dataset's `label_offset`.
            miou_classes (str): the classes mIoU averages over, one of MIOU_CLASSES (module doc).
            report_compute (bool): when evaluating inside `compute.measuring(model)` (as Trainer.test
                does), also report the compute the model spent: frames of each kind, key-frame
                share and GFLOPs per frame (vss.evaluation.compute).
        """
        meta = MetadataCatalog.get(dataset_name)
        self._dataset_name = dataset_name
        self._class_names = list(meta.stuff_classes)
        self._num_classes = len(self._class_names)
        self._label_offset = meta.label_offset
        self._distributed = distributed
        self._output_dir = output_dir
        self._save_predictions = save_predictions
        if miou_classes not in MIOU_CLASSES:
            raise ValueError(f"TEST.VSS.MIOU_CLASSES must be one of {MIOU_CLASSES}, got {miou_classes!r}")
        self._miou_classes = miou_classes
        self._report_compute = report_compute
        windows = sorted(set(vc_windows))
        bad = [n for n in windows if not isinstance(n, (int, np.integer)) or n < 2]
        if bad:
            raise ValueError(f"vc_windows {list(vc_windows)} has {bad}: expected integers >= 2")
        self._vc_windows = [int(n) for n in windows]
        if save_predictions and not output_dir:
            raise ValueError("save_predictions=True needs an output_dir to write the PNGs into")
        if save_predictions and self._num_classes > IGNORE_LABEL:
            raise ValueError(
                f"dataset {dataset_name}: {self._num_classes} classes do not fit the 8-bit prediction "
                f"PNGs (train ids 0..{IGNORE_LABEL - 1}; {IGNORE_LABEL} is the ignore value)"
            )
        # Predictions are stored compactly for the VC windows.
        self._pred_dtype = np.uint8 if self._num_classes <= 256 else np.int32
        self.reset()

    def reset(self):
        self._conf = np.zeros((self._num_classes, self._num_classes), dtype=np.int64)
        # None until a frame with a context mask arrives
        self._context_conf = None
        self._vc_values = {n: [] for n in self._vc_windows}
        self._closed_videos = set()
        self._video = None
        self._last_idx = None
        # (frame_idx, gt or None, prediction) of the last frames of the open video.
        self._frames = deque(maxlen=max(self._vc_windows, default=0))
        # the evaluated model, to count its frames by kind and size (None: no compute report)
        self._model = measured_model() if self._report_compute else None
        self._kinds = Counter()
        self._sizes = Counter()

    def process(self, inputs, outputs):
        kinds = None if self._model is None else frame_kinds(self._model, inputs)
        for i, (record, output) in enumerate(zip(inputs, outputs)):
            video, idx = str(record["video_id"]), int(record["frame_idx"])
            self._check_order(video, idx, record["file_name"])
            pred = self._labels(record["file_name"], output).cpu().numpy().astype(self._pred_dtype)
            gt = None
            if record["sem_seg_file_name"] is not None:
                gt = read_label(record["sem_seg_file_name"], self._num_classes, self._label_offset)
                if gt.shape != pred.shape:
                    raise ValueError(
                        f"prediction for {record['file_name']} is {pred.shape[0]}x{pred.shape[1]} "
                        f"but its label {record['sem_seg_file_name']} is {gt.shape[0]}x{gt.shape[1]}"
                    )
            if video == self._video and self._frames and self._frames[-1][2].shape != pred.shape:
                last_idx, _, last_pred = self._frames[-1]
                raise ValueError(
                    f"video {video!r}: prediction for frame_idx {idx} ({record['file_name']}) is "
                    f"{pred.shape[0]}x{pred.shape[1]} but frame_idx {last_idx} was "
                    f"{last_pred.shape[0]}x{last_pred.shape[1]}: VC windows need one frame size"
                )
            # Checks are done: only now does the frame change any state.
            if video != self._video:
                self._open_video(video)
            self._last_idx = idx
            if gt is not None:
                self._conf += self._confusion(gt, pred)
                if record.get("context_file_name"):
                    self._add_context(record, gt, pred)
            self._score_windows()
            self._frames.append((idx, gt, pred))
            if self._save_predictions:
                self._write_prediction(video, record["file_name"], pred)
            if kinds is not None:
                height, width = record["image"].shape[-2:]
                self._kinds[kinds[i]] += 1
                self._sizes[(height, width, record.get("height", height), record.get("width", width))] += 1

    def _labels(self, file_name, output):
        """The frame's (H, W) labels from "sem_seg_labels" (models run inside `labels_only()`, as
        Trainer.test runs them) or from (K, H, W) "sem_seg" scores."""
        if "sem_seg_labels" not in output:
            scores = output["sem_seg"]
            if scores.dim() != 3 or scores.shape[0] != self._num_classes:
                raise ValueError(
                    f"prediction for {file_name} has shape {tuple(scores.shape)}: "
                    f"expected ({self._num_classes}, H, W) class scores"
                )
            return scores.argmax(dim=0)
        labels = output["sem_seg_labels"]
        if labels.dim() != 2 or 0 in labels.shape:
            raise ValueError(f"predicted labels for {file_name} have shape {tuple(labels.shape)}: expected (H, W)")
        if labels.min() < 0 or labels.max() >= self._num_classes:
            raise ValueError(f"predicted labels for {file_name} range over [{labels.min()}, {labels.max()}]: "
                             f"expected class ids in [0, {self._num_classes - 1}]")
        return labels

    def _check_order(self, video, idx, file_name):
        if video != self._video:
            if video in self._closed_videos:
                raise ValueError(
                    f"video {video!r} came back at {file_name} after other videos: frames of a "
                    f"video must be consecutive in the evaluation order"
                )
        elif idx <= self._last_idx:
            raise ValueError(
                f"video {video!r}: frame_idx {idx} ({file_name}) comes after frame_idx "
                f"{self._last_idx}: frames of a video must be in increasing frame order"
            )

    def _open_video(self, video):
        if self._video is not None:
            self._closed_videos.add(self._video)
        self._video = video
        self._frames.clear()

    def _confusion(self, gt, pred):
        valid = gt != IGNORE_LABEL
        index = gt[valid].astype(np.int64) * self._num_classes + pred[valid]
        return np.bincount(index, minlength=self._num_classes ** 2).reshape(self._num_classes, -1)

    def _add_context(self, record, gt, pred):
        path = record["context_file_name"]
        mask = np.asarray(Image.open(path)) if os.path.isfile(path) else None
        if mask is None or mask.shape != gt.shape:
            found = "does not exist" if mask is None else f"is {mask.shape}"
            raise ValueError(f"context mask {path} of frame {record['file_name']} {found}: expected a "
                             f"{gt.shape[0]}x{gt.shape[1]} PNG (255 = context pixel)")
        context = mask == 255
        gt = np.where(context, gt, IGNORE_LABEL)
        conf = self._confusion(gt, pred)
        self._context_conf = conf if self._context_conf is None else self._context_conf + conf

    def _score_windows(self):
        """Score, for each n, the window that ends at the newest kept frame.

        Called when a later frame of the video arrives, so the window ending at the
        video's last frame is never scored: that is the official range(N - n).
        """
        for n in self._vc_windows:
            if len(self._frames) < n:
                continue
            window = list(itertools.islice(self._frames, len(self._frames) - n, None))
            if window[-1][0] - window[0][0] != n - 1 or any(gt is None for _, gt, _ in window):
                continue
            _, first_gt, first_pred = window[0]
            same_gt = np.ones(first_gt.shape, dtype=bool)
            same_pred = np.ones(first_gt.shape, dtype=bool)
            for _, gt, pred in window[1:]:
                same_gt &= gt == first_gt
                same_pred &= pred == first_pred
            stable = int(same_gt.sum())
            agree = int((same_gt & same_pred).sum())
            self._vc_values[n].append(agree / stable if stable else math.nan)

    def _write_prediction(self, video, file_name, pred):
        # Train ids, not raw ids (train id + label_offset): the official scripts compare the PNG
        # values with the ground truth after mapping it to 0-based train ids.
        folder = os.path.join(self._output_dir, video)
        path = os.path.join(folder, os.path.splitext(os.path.basename(file_name))[0] + ".png")
        try:
            os.makedirs(folder, exist_ok=True)
            Image.fromarray(pred.astype(np.uint8)).save(path)
        except OSError as e:
            raise OSError(f"cannot write the predicted labels of {file_name} to {path} "
                          f"(TEST.VSS.SAVE_PREDICTIONS): {e.strerror or e}") from None

    def evaluate(self):
        videos = set(self._closed_videos)
        if self._video is not None:
            videos.add(self._video)
        state = (self._conf, self._vc_values, videos, self._kinds, self._sizes, self._context_conf)
        if self._distributed:
            comm.synchronize()
            states = comm.gather(state, dst=0)
            if not comm.is_main_process():
                return {}
        else:
            states = [state]

        seen = {}
        for rank, (_, _, videos, *_) in enumerate(states):
            for video in videos:
                if video in seen:
                    raise ValueError(
                        f"video {video!r} was evaluated by processes {seen[video]} and {rank}: "
                        f"the inference sampler must give each process whole videos"
                    )
                seen[video] = rank
        conf = sum(state[0] for state in states)
        vc_values = {n: list(itertools.chain.from_iterable(state[1][n] for state in states))
                     for n in self._vc_windows}
        results = self._metrics(conf, vc_values)
        contexts = [state[5] for state in states if state[5] is not None]
        if contexts:
            context = self._scores(sum(contexts))
            results.update(zip(CONTEXT_METRICS, (context["mIoU"], context["pACC"])))
        kinds = sum((state[3] for state in states), Counter())
        compute = None
        if self._model is not None and kinds:
            entries, compute = report(self._model, kinds, sum((state[4] for state in states), Counter()))
            results.update(entries)
        self._log(results, compute)
        return OrderedDict(sem_seg=results)

    def _metrics(self, conf, vc_values):
        res = self._scores(conf)
        iou = res.pop("iou")
        for n in self._vc_windows:
            # fsum keeps the mean independent of the order videos were gathered in.
            scored = [v for v in vc_values[n] if not math.isnan(v)]
            res[f"mVC{n}"] = 100 * math.fsum(scored) / len(scored) if scored else math.nan
        for name, value in zip(self._class_names, iou):
            res[f"IoU-{name}"] = 100 * value
        return res

    def _scores(self, conf):
        if not conf.sum():
            logger.warning("dataset %s: no labelled pixel was evaluated", self._dataset_name)
        return confusion_scores(conf, self._miou_classes)

    def _log(self, res, compute):
        pairs_per_row = 3
        cells = [x for name in self._class_names for x in (name, res[f"IoU-{name}"])]
        width = 2 * pairs_per_row
        rows = [cells[i:i + width] for i in range(0, len(cells), width)]
        table = tabulate(rows, headers=["class", "IoU"] * pairs_per_row, tablefmt="pipe",
                         floatfmt=".2f", numalign="left")
        logger.info("Per-class IoU on %s:\n%s", self._dataset_name, table)
        summary = {k: v for k, v in res.items() if not k.startswith("IoU-")}
        logger.info("VSS metrics on %s:\n%s", self._dataset_name, create_small_table(summary))
        if compute is not None:
            logger.info("Compute spent on %s: %s", self._dataset_name, compute)

"""Flow diagnostics: does each MPVSS variant move the key frame's masks where the objects move?

Measured against the synthetic videos' exact ground truth (`vss.data.synthetic.ground_truth_flow`),
independently of segmentation quality:

- per-query flow EPE: every pixel of the frame belongs to the key-frame query that wins it
  (the largest P(class) x P(pixel in mask), the class being the query's best non-void one:
  the query whose mask paints that pixel in the semantic map); the error at a pixel is
  || flow of its query - ground truth ||. Winning, rather than `sigmoid > 0.5`, gives each
  pixel exactly one query, so averaging over pixels is the average over queries weighted by
  their pixels, and a one-map flow (Optical flow, a FlowNetS) reduces to plain pixel EPE;
- Copy is the zero flow (its EPE is the mean ground-truth motion); Optical flow and
  Query-for-PF use one pixel flow for every query; the query variants each query's own flow;
- valid ground-truth pixels only (the point is visible in both frames), split into moving
  and static pixels (ground-truth motion above / at most MOVING_PIXELS) and, apart, the
  pixels of the moving object classes (car, person, ball, bird: the frame's label): the
  camera pans, so most background pixels move too, but only the objects move against it,
  and they are a small share of the frame;
- per gap (frames between the key frame and the current frame) and over all gaps; over all
  gaps also per class of the frame's label ("EPE_classes"): mIoU weighs every class alike,
  where the pixel means above are dominated by the large background classes.

Propagation with the true flow (MPVSS variants): each frame's prediction is also made the
way MPVSS makes it, from its key frame's class and mask logits warped with the variant's own
flow ("flow") and with the ground-truth flow ("true flow"), and both are scored with
VSSEvaluator (mIoU, WIoU, pACC, per-class IoU) over the same frames. The key frame's
segmentation is the same in both, so the difference is what the variant's flow error costs
in segmentation, class by class; "true flow" is the best its key-frame masks can do. Where a
surface is hidden in the key frame the true flow still points to where it is, so the warp
samples what hides it there: what the key frame never saw no flow can bring back.

Units: a FlowEstimator predicts in pixels of its grid (1/8 of the padded model input by
default: a grid unit is 8 input pixels); `flow_in_frame_pixels` brings it to the pixels of
the original frame (the model input may be resized from it).
"""
import math
from collections import defaultdict

import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from torch.nn import functional as F

from ..data.datasets.synthetic import SYNTHETIC_OBJECTS
from ..data.io import read_label
from ..data.mappers import FrameMapper
from ..data.synthetic import ground_truth_flow
from ..data.video import group_by_video
from ..modeling.mask2former.semantic import upsample_masks
from ..modeling.mpvss import FlowNetS, MaskPropagation
from ..modeling.mpvss.warp import upsample_flow
from .vss_evaluator import VSSEvaluator

__all__ = ["MOVING_PIXELS", "FlowEPE", "flow_in_frame_pixels", "true_grid_flow", "winning_queries",
           "flow_diagnostics"]

# ground-truth motion above this many frame pixels counts as moving
MOVING_PIXELS = 0.5
REGIONS = ("all", "moving", "static", "objects")


def flow_in_frame_pixels(flow, padded_size, image_size, frame_size):
    """Flow on a grid over the padded input -> flow in pixels of the original frame.

    Args:
        flow: (N, 2, hf, wf) in pixels of its grid, the grid covering the padded input.
        padded_size: (Hp, Wp) of the padded model input.
        image_size: (h, w) of the input inside the padding.
        frame_size: (H, W) of the original frame (the input is the frame resized to h x w).
    Returns:
        (N, 2, H, W) in pixels of the original frame.
    """
    h, w = image_size
    flow = upsample_flow(flow, tuple(padded_size))[..., :h, :w]
    return upsample_flow(flow, tuple(frame_size))


def true_grid_flow(gt_flow, image_size, padded_size):
    """Ground-truth flow (H, W, 2) in frame pixels -> (1, 2, Hp, Wp) in pixels of the padded
    model input (the frame resized to image_size, zero-padded to padded_size): one map for every
    query, as a pixel-flow module gives it."""
    h, w = image_size
    flow = torch.as_tensor(gt_flow, dtype=torch.float32).permute(2, 0, 1)[None]
    flow = upsample_flow(flow, (h, w))
    return F.pad(flow, (0, padded_size[1] - w, 0, padded_size[0] - h))


def winning_queries(class_logits, mask_logits):
    """(H, W) index of the query that paints each pixel in the semantic map.

    class_logits: (Q, K + 1) with "no object" last; mask_logits: (Q, H, W).
    """
    confidence = F.softmax(class_logits, dim=-1)[:, :-1].max(dim=-1).values
    return (confidence[:, None, None] * mask_logits.sigmoid()).argmax(dim=0)


class FlowEPE:
    """Pixel-weighted end-point errors, summed over frames; `summary()` gives the means."""

    def __init__(self, moving_pixels=MOVING_PIXELS, class_names=()):
        self.moving_pixels = moving_pixels
        self.class_names = list(class_names)
        # gap -> region -> [pixels, sum of EPE]
        self._sums = defaultdict(lambda: {r: [0, 0.0] for r in REGIONS})
        # class id -> [pixels, sum of EPE], over all gaps
        self._class_sums = torch.zeros(len(self.class_names), 2, dtype=torch.float64)

    def add(self, flow, gt_flow, valid, gap, owner=None, objects=None, labels=None):
        """One frame.

        Args:
            flow: (Q, 2, H, W) one map per query, or (2, H, W) one map for every pixel; frame pixels.
            gt_flow: (H, W, 2) ground truth, channel 0 = dx (ground_truth_flow's layout).
            valid: (H, W) bool; gap: frames between key frame and frame.
            owner: (H, W) query index of each pixel (winning_queries); needed when flow has Q maps.
            objects: (H, W) bool, the pixels of moving objects (None: that region stays empty).
            labels: (H, W) class ids of the frame (values outside [0, len(class_names)), such as
                the ignore value 255, count in no class); None: no per-class sums.
        """
        gt = torch.as_tensor(gt_flow, dtype=torch.float64).permute(2, 0, 1)
        valid = torch.as_tensor(valid, dtype=torch.bool)
        flow = flow.detach().to("cpu", torch.float64)
        if flow.dim() == 4:
            if owner is None or owner.shape != gt.shape[1:]:
                raise ValueError(f"FlowEPE: {flow.shape[0]} query flows need an (H, W) = {tuple(gt.shape[1:])} "
                                 f"owner map, got {None if owner is None else tuple(owner.shape)}")
            index = owner.to("cpu", torch.long)[None, None].expand(1, 2, -1, -1)
            flow = flow.gather(0, index)[0]
        if flow.shape != gt.shape or valid.shape != gt.shape[1:]:
            raise ValueError(f"FlowEPE: flow {tuple(flow.shape)}, ground truth (2, H, W) {tuple(gt.shape)} and "
                             f"validity {tuple(valid.shape)} disagree")
        epe = torch.linalg.vector_norm(flow - gt, dim=0)
        moving = torch.linalg.vector_norm(gt, dim=0) > self.moving_pixels
        objects = torch.zeros_like(valid) if objects is None else torch.as_tensor(objects, dtype=torch.bool)
        if objects.shape != valid.shape:
            raise ValueError(f"FlowEPE: objects mask {tuple(objects.shape)} and validity {tuple(valid.shape)} disagree")
        sums = self._sums[int(gap)]
        for region, mask in zip(REGIONS, (valid, valid & moving, valid & ~moving, valid & objects)):
            sums[region][0] += int(mask.sum())
            sums[region][1] += float(epe[mask].sum())
        if labels is not None:
            labels = torch.as_tensor(labels, dtype=torch.long)
            if labels.shape != valid.shape:
                raise ValueError(f"FlowEPE: labels {tuple(labels.shape)} and validity {tuple(valid.shape)} disagree")
            counted = valid & (labels >= 0) & (labels < len(self.class_names))
            ids = labels[counted]
            self._class_sums[:, 0] += torch.bincount(ids, minlength=len(self.class_names)).double()
            self._class_sums[:, 1] += torch.bincount(ids, weights=epe[counted], minlength=len(self.class_names))

    def summary(self):
        """{"EPE", "EPE_moving", "EPE_static", "EPE_objects", "pixels_moving", "pixels_objects",
        "gaps": {gap: same keys}, "EPE_classes": {class name: EPE over all gaps}}; NaN where no pixel."""

        def means(parts):
            out = {}
            for region in REGIONS:
                pixels = sum(p[region][0] for p in parts)
                total = sum(p[region][1] for p in parts)
                out["EPE" if region == "all" else f"EPE_{region}"] = total / pixels if pixels else math.nan
            out["pixels_moving"] = sum(p["moving"][0] for p in parts)
            out["pixels_objects"] = sum(p["objects"][0] for p in parts)
            return out

        pixels, total = self._class_sums.unbind(1)
        per_class = {name: float(t / n) if n else math.nan
                     for name, n, t in zip(self.class_names, pixels.tolist(), total.tolist())}
        return {**means(list(self._sums.values())),
                "gaps": {gap: means([self._sums[gap]]) for gap in sorted(self._sums)},
                "EPE_classes": per_class}


def _owners(cache, frame_size):
    """winning_queries of a KeyFrameCache at the frame's size, the masks resized as the semantic
    path resizes them."""
    h, w = cache.image_size
    masks = upsample_masks(cache.mask_logits[None], cache.padded_size)[..., :h, :w]
    masks = F.interpolate(masks, size=frame_size, mode="bilinear", align_corners=False)
    return winning_queries(cache.class_logits, masks[0])


@torch.no_grad()
def flow_diagnostics(model, cfg, dataset_name, max_gap=10, moving_pixels=MOVING_PIXELS,
                     object_classes=SYNTHETIC_OBJECTS):
    """Flow errors of `model` on the synthetic videos of `dataset_name`: FlowEPE's summary, and
    for an MPVSS model "propagation": {"flow": metrics, "true flow": metrics} (see the module doc).

    Key frames are every `max_gap`-th frame of each video (0, max_gap, ...), and each is paired
    with the next `max_gap` frames (gaps 1..max_gap), so every frame but the first is seen once.
    The frames go through the test mapper of `cfg` (resized as in evaluation); the classes
    named in `object_classes` make the "objects" region.
    """
    temporal = getattr(model, "temporal", None)
    uses_masks = isinstance(temporal, MaskPropagation)
    if not uses_masks and not isinstance(model, FlowNetS):
        raise ValueError(f"flow_diagnostics: {type(model).__name__} is neither an MPVSS model (VideoSegmentor "
                         "with the MaskPropagation head) nor a FlowNetS model")
    meta = MetadataCatalog.get(dataset_name)
    root = meta.get("dataset_root", None)
    if root is None:
        raise ValueError(f"flow_diagnostics: dataset {dataset_name!r} has no dataset_root in its metadata; "
                         "it needs a synthetic set (ground-truth motion)")
    classes = meta.stuff_classes
    object_ids = torch.tensor([classes.index(c) for c in object_classes if c in classes]).view(-1, 1, 1)
    mapper = FrameMapper(cfg, is_train=False)
    was_training = model.training
    model.eval()
    result = FlowEPE(moving_pixels, classes)
    scores = {k: VSSEvaluator(dataset_name, distributed=False, vc_windows=()) for k in ("flow", "true flow")}
    try:
        for video, records in group_by_video(DatasetCatalog.get(dataset_name)).items():
            for key in range(0, len(records), max_gap):
                key_frame = mapper(records[key])
                cache = temporal.key_frame(model, key_frame) if uses_masks else None
                owner = None
                for t in range(key + 1, min(key + max_gap + 1, len(records))):
                    record = records[t]
                    gt, valid = ground_truth_flow(root, video, record["frame_idx"], records[key]["frame_idx"])
                    frame = mapper(record)
                    if frame["image"].shape != key_frame["image"].shape:
                        raise ValueError(f"flow_diagnostics: {record['file_name']} is {tuple(frame['image'].shape)} "
                                         f"but its key frame {records[key]['file_name']} is "
                                         f"{tuple(key_frame['image'].shape)}")
                    size, frame_size = tuple(frame["image"].shape[-2:]), gt.shape[:2]
                    if uses_masks:
                        # the model's own steps, once with its flow and once with the true one
                        flow, padded = temporal.key_flow(model, frame, cache), cache.padded_size
                        true_flow = true_grid_flow(gt, size, padded).to(model.device)[None]
                        for name, f in (("flow", flow), ("true flow", true_flow)):
                            masks = temporal.propagate(cache.mask_logits[None], f)
                            scores[name].process([record], [temporal.prediction(cache, masks, frame_size)])
                        if owner is None:
                            owner = _owners(cache, frame_size)
                    else:
                        flow, padded = model.pair_flow(frame, key_frame)
                    if flow is None:
                        flow = torch.zeros(2, *frame_size)
                    else:
                        flow = flow_in_frame_pixels(flow[0], padded, size, frame_size)
                        flow = flow[0] if flow.shape[0] == 1 else flow
                    label = torch.from_numpy(read_label(record["sem_seg_file_name"], len(classes), meta.label_offset))
                    objects = (label[None] == object_ids).any(0)
                    result.add(flow, gt, valid, t - key, owner if flow.dim() == 4 else None, objects, label)
    finally:
        model.train(was_training)
    summary = result.summary()
    if uses_masks:
        summary["propagation"] = {k: dict(s.evaluate()["sem_seg"]) for k, s in scores.items()}
    return summary

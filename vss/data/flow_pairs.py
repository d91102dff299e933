"""Loading frame pairs with ground-truth flow (datasets/flow_pairs.py records) for FlowNetS.

Training applies one augmentation draw to both frames (as every video sampler here) and
moves the flow with the geometry: the flow map is resampled like a label map (nearest,
so no vector mixes two motions) and each vector is mapped by the transform's linear
part: a resize by (sx, sy) scales (dx, dy) by (sx, sy), a horizontal flip negates dx, a
crop changes nothing. Colour jitter leaves the flow alone. Test loading resizes the
frames as for segmentation and keeps the ground truth at the record's size, the size the
model's output is resized back to.
"""
import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader

from .augment import augment_frames, build_augmentations
from .build import resumable_train_loader
from .io import read_frame
from .synthetic import ground_truth_flow

__all__ = ["FlowPairMapper", "build_flow_test_loader", "build_flow_train_loader", "is_flow_dataset",
           "transform_flow"]

_UNIT_POINTS = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])


def is_flow_dataset(names):
    """True if every dataset in `names` is a flow-pair dataset, False if none is; mixing is an error."""
    kinds = {name: MetadataCatalog.get(name).get("evaluator_type") == "flow" for name in names}
    if len(set(kinds.values())) > 1:
        raise ValueError(f"datasets {sorted(kinds)} mix flow-pair datasets "
                         f"({sorted(n for n, f in kinds.items() if f)}) with frame datasets: train one kind")
    return bool(kinds) and all(kinds.values())


def _linear_part(transform):
    """2x2 matrix mapping a displacement through an affine `transform` (error if it is not affine)."""
    a, ex, ey, exy = transform.apply_coords(_UNIT_POINTS.copy())
    linear = np.stack([ex - a, ey - a], 1)
    if not np.allclose(exy, a + linear.sum(1), atol=1e-6):
        raise ValueError(f"augmentation {type(transform).__name__} is not affine: flow vectors cannot follow it")
    return linear


def transform_flow(transforms, flow, valid):
    """Apply detectron2 `transforms` (a TransformList) to a flow field defined on the frame.

    flow: (H, W, 2) float, channel 0 = dx; valid: (H, W) bool. Returns both transformed.
    The map is resampled as a segmentation (one nearest resampling for flow and validity
    together); vectors are mapped by each transform's linear part.
    """
    field = np.concatenate([flow, valid[..., None]], 2).astype(np.float32)
    for t in transforms.transforms:
        linear = _linear_part(t)
        field = np.array(t.apply_segmentation(field), dtype=np.float32)
        field[..., :2] = field[..., :2] @ linear.T.astype(np.float32)
    return np.ascontiguousarray(field[..., :2]), field[..., 2] > 0.5


class FlowPairMapper:
    """A pair record -> {"image", "key_image": (3, H, W) uint8, "flow": (2, H, W) float32 in pixels,
    "flow_valid": (H, W) bool} plus the record's keys (flow at the frame's size, see module doc)."""

    @configurable
    def __init__(self, is_train=True, *, augmentations, image_format, ground_truth=ground_truth_flow):
        """
        ground_truth: callable (root, video_id, frame, key_frame) -> (flow (H, W, 2), valid (H, W)).
        """
        self.is_train = is_train
        self.augmentations = list(augmentations)
        self.image_format = image_format
        self.ground_truth = ground_truth

    @classmethod
    def from_config(cls, cfg, is_train=True):
        if cfg.INPUT.FORMAT != "RGB":
            raise ValueError(f"flow pairs feed the flow module, which reads RGB frames, but INPUT.FORMAT is "
                             f"{cfg.INPUT.FORMAT!r}")
        if is_train and cfg.INPUT.CROP.ENABLED and cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA < 1.0:
            raise ValueError("flow pairs have no label for the crop's category constraint: set "
                             f"INPUT.CROP.SINGLE_CATEGORY_MAX_AREA to 1.0 (got {cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA})")
        return {"is_train": is_train, "augmentations": build_augmentations(cfg, is_train),
                "image_format": cfg.INPUT.FORMAT}

    def _read(self, path, record):
        image = read_frame(path, self.image_format)
        if image.shape[:2] != (record["height"], record["width"]):
            raise ValueError(f"frame {path} is {image.shape[0]}x{image.shape[1]} but its pair record "
                             f"{record['image_id']} says {record['height']}x{record['width']}")
        return image

    def __call__(self, record):
        image = self._read(record["file_name"], record)
        key_image = self._read(record["key_file_name"], record)
        flow, valid = self.ground_truth(record["flow_root"], record["video_id"], record["frame_idx"],
                                   record["key_frame_idx"])
        if flow.shape != (*image.shape[:2], 2) or valid.shape != image.shape[:2]:
            raise ValueError(f"ground-truth flow of pair {record['image_id']} is {flow.shape} with validity "
                             f"{valid.shape}; frame {record['file_name']} needs ({image.shape[0]}, "
                             f"{image.shape[1]}, 2) and ({image.shape[0]}, {image.shape[1]})")
        (image, key_image), _, transforms = augment_frames(self.augmentations, [image, key_image],
                                                           [None, None], anchor=0)
        if self.is_train:
            flow, valid = transform_flow(transforms, flow, valid)
        out = dict(record)
        out.update(
            image=torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))),
            key_image=torch.as_tensor(np.ascontiguousarray(key_image.transpose(2, 0, 1))),
            flow=torch.as_tensor(np.ascontiguousarray(flow.transpose(2, 0, 1)), dtype=torch.float32),
            flow_valid=torch.as_tensor(np.asarray(valid, dtype=bool)),
        )
        return out


def _records(names):
    records = []
    for name in names:
        dataset = DatasetCatalog.get(name)
        if not dataset:
            raise ValueError(f"flow-pair dataset {name!r} has no pairs")
        records.extend(dataset)
    return records


def build_flow_train_loader(cfg, mapper=None):
    """The endless, resumable training loader over the pairs of cfg.DATASETS.TRAIN."""
    return resumable_train_loader(cfg, _records(cfg.DATASETS.TRAIN), mapper or FlowPairMapper(cfg, is_train=True))


def build_flow_test_loader(cfg, dataset_name, mapper=None):
    """A loader yielding [mapped pair] batches of `dataset_name` (frames resized as INPUT.MIN_SIZE_TEST)."""
    return build_detection_test_loader(_records([dataset_name]), mapper=mapper or FlowPairMapper(cfg, False),
                                       num_workers=cfg.DATALOADER.NUM_WORKERS)

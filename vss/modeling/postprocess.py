"""The last step of every model's test-time path: class scores at the frame's size, or only labels.

Models end with (K, h, w) class scores at the input resolution, cropped to the image and
resized bilinearly to the frame's (height, width) (detectron2's `sem_seg_postprocess`). At
124 classes that map is K x height x width float32: 4.1 GB for a 2160x3840 frame. Callers
that need only labels (the evaluator, the demo, `VideoPredictor(labels_only=True)`) run the
model inside `labels_only()`; the models then return {"sem_seg_labels": (height, width)}
from `sem_seg_labels`, which resizes a few classes at a time and keeps a running maximum,
so the peak is a few height x width planes whatever K is.

Why chunks of classes and not bands of rows: F.interpolate computes the source coordinate
of output row i in float32 from i itself, so a band resized on its own (even with a margin
of source rows) samples coordinates that differ from the whole map's in the last bits, and
near-ties flip. A subset of the channels goes through the very same per-channel arithmetic,
so the labels equal the argmax of the full map exactly.
"""
import contextlib
import contextvars

import torch
from detectron2.modeling.postprocessing import sem_seg_postprocess

# 2**24 float32 values (64 MiB) per chunk of resized classes: at least one class at a time.
DEFAULT_CHUNK_ELEMENTS = 1 << 24

_labels_only = contextvars.ContextVar("vss_labels_only", default=False)


@contextlib.contextmanager
def labels_only(enabled=True):
    """Within the block, models built here return {"sem_seg_labels": (H, W) int64} per image
    instead of {"sem_seg": (K, H, W)} scores (see `sem_seg_output`)."""
    token = _labels_only.set(enabled)
    try:
        yield
    finally:
        _labels_only.reset(token)


def sem_seg_labels(scores, image_size, height, width, chunk_elements=DEFAULT_CHUNK_ELEMENTS):
    """argmax over classes of `sem_seg_postprocess(scores, image_size, height, width)`, without
    building that (K, height, width) map.

    Args:
        scores: (K, H', W') class scores of one image, padding included.
        image_size: (h, w) of the image inside the padding.
        height, width: output size.
        chunk_elements: how many output values to resize at once (rounded to whole classes,
            at least one).
    Returns:
        (height, width) int64 labels, equal to the full map's argmax (the first class among
        equal maxima; NaN counts as the maximum, as in torch.argmax).
    """
    if scores.dim() != 3 or 0 in scores.shape:
        raise ValueError(f"expected (K, H, W) class scores with K, H, W > 0, got shape {tuple(scores.shape)}")
    h, w = image_size
    if not (0 < h <= scores.shape[1] and 0 < w <= scores.shape[2]):
        raise ValueError(f"image size {tuple(image_size)} does not fit in the {scores.shape[1]}x{scores.shape[2]} "
                         "scores (expected 0 < h <= H and 0 < w <= W)")
    if height <= 0 or width <= 0:
        raise ValueError(f"output size must be positive, got {height}x{width}")
    step = max(1, chunk_elements // (height * width))
    best, labels = None, None
    for start in range(0, scores.shape[0], step):
        value, index = sem_seg_postprocess(scores[start:start + step], image_size, height, width).max(dim=0)
        if best is None:
            best, labels = value, index
            continue
        # Strictly greater keeps the earlier class on ties, as argmax does. In place: the
        # planes kept across chunks are all the memory this function needs beyond a chunk.
        take = (value > best) | (value.isnan() & ~best.isnan())
        torch.maximum(best, value, out=best)  # NaN propagates, as in `take`
        torch.where(take, index.add_(start), labels, out=labels)
    return labels


def sem_seg_output(scores, image_size, height, width):
    """One image's output dict from its (K, H', W') scores (padding included): {"sem_seg":
    (K, height, width)}, or {"sem_seg_labels": (height, width)} inside `labels_only()`.
    `image_size` None: the scores are (K, height, width) already and are not resized."""
    if image_size is None:
        return {"sem_seg_labels": scores.argmax(dim=0)} if _labels_only.get() else {"sem_seg": scores}
    if _labels_only.get():
        return {"sem_seg_labels": sem_seg_labels(scores, image_size, height, width)}
    return {"sem_seg": sem_seg_postprocess(scores, image_size, height, width)}


def output_labels(output):
    """(H, W) labels of a model output: its "sem_seg_labels", else the argmax of its "sem_seg"
    (models outside this package, such as detectron2's SemanticSegmentor, give only scores)."""
    if "sem_seg_labels" in output:
        return output["sem_seg_labels"]
    return output["sem_seg"].argmax(dim=0)

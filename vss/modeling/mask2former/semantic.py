"""Mask2Former's test-time semantic path: query predictions -> per-class score maps.

Shared by MaskFormer and by callers that produce mask logits another way (MPVSS warps
them from a key frame), so every frame goes through the same post-processing.
"""
import torch
from detectron2.modeling.postprocessing import sem_seg_postprocess
from torch.nn import functional as F

from ..postprocess import sem_seg_output


def semantic_inference(mask_cls, mask_pred):
    """Per-class scores of one image: sum over queries of P(class) x P(pixel in mask).

    Args:
        mask_cls: (Q, K + 1) class logits; the last class is "no object" and is dropped
            after the softmax.
        mask_pred: (Q, H, W) mask logits.
    Returns:
        (K, H, W) scores in [0, Q] (not logits; argmax over K gives the label).
    """
    probs = F.softmax(mask_cls, dim=-1)[..., :-1]
    return torch.einsum("qc,qhw->chw", probs, mask_pred.sigmoid())


def upsample_masks(pred_masks, padded_size):
    """Mask logits (B, Q, h, w) at 1/4 resolution -> (B, Q, *padded_size), bilinear."""
    return F.interpolate(pred_masks, size=padded_size, mode="bilinear", align_corners=False)


def semantic_postprocess(mask_cls, mask_pred, image_size, height, width, before_inference=False):
    """Output of one image at its requested output size.

    Args:
        mask_cls: (Q, K + 1) class logits.
        mask_pred: (Q, Hp, Wp) mask logits at the padded input size.
        image_size: (h, w) of the image inside the padding.
        height, width: output size (the original frame size when the input was resized).
        before_inference: crop and resize the mask logits, then combine with the classes
            (upstream SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE); by default the combined
            (K, Hp, Wp) scores are cropped and resized instead.
    Returns:
        {"sem_seg": (K, height, width) float scores}, or {"sem_seg_labels": (height, width)}
        inside `postprocess.labels_only()` (only the default order bounds its memory: the
        other builds the Q x height x width masks first).
    """
    if before_inference:
        mask_pred = sem_seg_postprocess(mask_pred, image_size, height, width)
        scores = semantic_inference(mask_cls.to(mask_pred), mask_pred)
        return sem_seg_output(scores, None, height, width)
    return sem_seg_output(semantic_inference(mask_cls, mask_pred), image_size, height, width)


def semantic_outputs(pred_logits, pred_masks, padded_size, image_sizes, output_sizes, before_inference=False):
    """Batch form of the whole path, from decoder outputs to one output dict per image.

    Args:
        pred_logits: (B, Q, K + 1); pred_masks: (B, Q, h, w) mask logits at 1/4 of the padded size.
        padded_size: (Hp, Wp) of the padded batch fed to the backbone.
        image_sizes: B (h, w) sizes before padding; output_sizes: B (height, width).
    Returns:
        list of B dicts, as `semantic_postprocess` gives.
    """
    masks = upsample_masks(pred_masks, padded_size)
    return [
        semantic_postprocess(cls, mask, image_size, out[0], out[1], before_inference)
        for cls, mask, image_size, out in zip(pred_logits, masks, image_sizes, output_sizes)
    ]

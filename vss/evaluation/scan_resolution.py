"""The per-frame SegFormer's prediction made at TV3S's scan resolution.

TV3S classifies the map its Mamba layers scan: the fused 1/4 map halved and rounded up to a
multiple of the window (`mamba_map_size`), where the per-frame SegFormerHead classifies the 1/4
map itself. On small frames that coarser map, not the temporal modelling, can decide the
comparison of the two. Both classifiers are 1x1 convolutions and bilinear resizing is linear
with weights summing to one, so classifying the resized fused map equals resizing the logits:
the model built here is what TV3S would output with a temporal module that changed nothing
and the per-frame classifier. Its score is the ceiling the scan resolution puts on TV3S.
"""
import copy

import torch.nn.functional as F

from ..modeling.tv3s.head import mamba_map_size

__all__ = ["at_scan_resolution"]


def at_scan_resolution(model, window_size):
    """A copy of the per-frame `model` (a SegFormerHead as sem_seg_head) that predicts on the
    fused map resized to TV3S's scan map for windows of `window_size`, then resized back."""
    model = copy.deepcopy(model)
    head = model.sem_seg_head
    if not hasattr(head, "predict"):
        raise ValueError(f"at_scan_resolution needs a per-frame head with predict() (SegFormerHead), "
                         f"got {type(head).__name__}")
    predict = head.predict

    def predict_at_scan_resolution(fused):
        size = mamba_map_size(*fused.shape[-2:], window_size)
        coarse = F.interpolate(fused, size=size, mode="bilinear", align_corners=False)
        return F.interpolate(predict(coarse), size=fused.shape[-2:], mode="bilinear", align_corners=False)

    head.predict = predict_at_scan_resolution
    return model

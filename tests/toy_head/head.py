"""ReusedLogits: a toy temporal head on a per-frame SegFormer head.

Every other frame of a video is a key frame, segmented by the per-frame head; the frame after it
reuses the key frame's class logits. A head of the project's interface (TEMPORAL_HEAD_REGISTRY)
written outside the package, to show that a new head needs nothing from the shared code but its
registration and a config.
"""
import torch
import torch.nn.functional as F
from detectron2.structures import ImageList
from torch import nn

from vss.modeling import TEMPORAL_HEAD_REGISTRY
from vss.modeling.frame_plan import FramePlan
from vss.modeling.postprocess import sem_seg_output
from vss.modeling.segformer_head import cross_entropy

INTERVAL = 2


@TEMPORAL_HEAD_REGISTRY.register()
class ReusedLogits(nn.Module):
    def __init__(self, cfg, input_shape):
        super().__init__()
        self.ignore_value = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
        # a weight of its own, saved and loaded as temporal.temperature
        self.temperature = nn.Parameter(torch.ones(()))

    def logits(self, model, images):
        head = model.sem_seg_head
        return head.predict(head.forward_features(model.backbone(images))) * self.temperature

    def losses(self, model, batched_inputs):
        images = model.preprocess_image([x["image"] for x in batched_inputs])
        targets = ImageList.from_tensors([x["sem_seg"] for x in batched_inputs], model.size_divisibility,
                                         pad_value=self.ignore_value).tensor.to(model.device)
        return {"loss_sem_seg": cross_entropy(self.logits(model, images.tensor), targets, self.ignore_value)}

    def infer(self, model, frame, state):
        images = model.preprocess_image([frame["image"].to(model.device).float()])
        if state is None or frame["frame_idx"] - state[0] >= INTERVAL:
            state = (frame["frame_idx"], self.logits(model, images.tensor)[0])
        logits = F.interpolate(state[1][None], size=images.tensor.shape[-2:], mode="bilinear", align_corners=False)
        size = images.image_sizes[0]
        return sem_seg_output(logits[0], size, frame.get("height", size[0]), frame.get("width", size[1])), state

    def frame_plan(self):
        return FramePlan({0: "key frame", 1: "reused frame"}, lambda i: i % INTERVAL, tuple(range(INTERVAL)),
                         f"a key frame every {INTERVAL} frames, the others reuse its logits", key="key frame")

    def frame_kind(self, frame_idx, previous, state):
        return "key frame" if state[0] == frame_idx else "reused frame"

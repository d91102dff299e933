"""MPVSS's temporal head: Mask2Former on key frames, flow-warped key masks elsewhere.

Inference (per frame of a video, `infer`): a key frame (see keyframes.KeyFramePolicy) runs
the backbone and Mask2Former head and refreshes the video's KeyFrameCache; any other
frame estimates per-query flow from (current frame, key frame, key queries), warps the
key frame's mask logits with it and combines them with the key frame's class logits,
through the same semantic path as Mask2Former.

Training (`losses`, on pair samples from INPUT.VIDEO.SAMPLER "pair"): the earlier frame
of the pair is the key frame; its predictions (the final one and every auxiliary one)
are warped to the later frame with one flow and trained with Mask2Former's set loss
against the later frame's labels. No flow loss: the flow learns from the segmentation
loss alone. What is trained is decided by MODEL.VIDEO.TRAINABLE (the paper: the flow
module, class_embed and mask_embed); frozen parts build no autograd graph since no
input of theirs requires grad, and their gradients would be None anyway.
"""
from dataclasses import replace

import torch
from detectron2.config import configurable
from detectron2.structures import ImageList
from torch import nn

from ..mask2former import build_criterion, semantic_outputs
from ..mask2former.maskformer import prepare_targets
from ..video_segmentor import TEMPORAL_HEAD_REGISTRY
from .flow import FlowEstimator
from .keyframes import KeyFrameCache, KeyFramePolicy, mask_confidence
from .warp import WARPS, warp_masks

PROPAGATIONS = ("flow", "copy")
KEY_POLICIES = ("fixed", "adaptive")


@TEMPORAL_HEAD_REGISTRY.register()
class MaskPropagation(nn.Module):
    # The release saves the whole model with this head's flow module as `motion.*` and its
    # criterion as `criterion.*` (O: mask2former/mpvss.py:78-82); MODEL.WEIGHTS naming them so
    # (an official MPVSS checkpoint) loads renamed (vss.engine.checkpoint).
    weights_renamed = {"motion.": "flow.", "criterion.": "criterion."}

    @configurable
    def __init__(self, *, flow, criterion, policy, warp="exact", sem_seg_postprocess_before_inference=False):
        """
        Args:
            flow: module called as flow(images, key_images, key_queries, image_sizes) ->
                (B, Q, 2, h, w) backward flow in pixels of its grid (FlowEstimator), or
                None for the "copy" baseline: zero flow, key masks reused unchanged.
            criterion: Mask2Former SetCriterion; its weight_dict weighs the losses.
            policy: KeyFramePolicy choosing the key frames at inference.
            warp: how flow moves the key masks, one of warp.WARPS: "exact" or "release"
                (the official release's grid, needed by its checkpoints; see warp.py).
            sem_seg_postprocess_before_inference: as MaskFormer's (semantic.semantic_postprocess).
        """
        super().__init__()
        self.flow = flow
        self.criterion = criterion
        self.policy = policy
        if warp not in WARPS:
            raise ValueError(f"MODEL.MPVSS.WARP must be one of {WARPS}, got {warp!r}")
        self.warp = warp
        self.sem_seg_postprocess_before_inference = sem_seg_postprocess_before_inference

    @classmethod
    def from_config(cls, cfg, input_shape):
        mpvss = cfg.MODEL.MPVSS
        if mpvss.PROPAGATION not in PROPAGATIONS:
            raise ValueError(f"MODEL.MPVSS.PROPAGATION must be one of {PROPAGATIONS}, got {mpvss.PROPAGATION!r}")
        if mpvss.KEY_POLICY not in KEY_POLICIES:
            raise ValueError(f"MODEL.MPVSS.KEY_POLICY must be one of {KEY_POLICIES}, got {mpvss.KEY_POLICY!r}")
        if mpvss.PROPAGATION == "flow" and cfg.INPUT.FORMAT != "RGB":
            raise ValueError(f"MaskPropagation: the flow module reads RGB frames (its normalisation is per RGB "
                             f"channel) but INPUT.FORMAT is {cfg.INPUT.FORMAT!r}")
        return {
            "flow": FlowEstimator(cfg) if mpvss.PROPAGATION == "flow" else None,
            "criterion": build_criterion(cfg),
            "policy": KeyFramePolicy(
                interval=mpvss.KEY_INTERVAL,
                adaptive=mpvss.KEY_POLICY == "adaptive",
                min_confidence_ratio=mpvss.KEY_MIN_CONFIDENCE_RATIO,
            ),
            "warp": mpvss.WARP,
            "sem_seg_postprocess_before_inference":
                cfg.MODEL.MASK_FORMER.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE,
        }

    def propagate(self, mask_logits, images, key_images, key_queries, image_sizes):
        """Key-frame mask logits (B, Q, [P,] h, w) moved to the current frames.

        images, key_images: (B, 3, H, W) raw RGB frames (0-255) padded like the model's input,
        so that the flow and the masks cover the same padded frame.
        """
        if self.flow is None:
            return mask_logits
        div = self.flow.size_divisibility
        if images.shape[-2] % div or images.shape[-1] % div:
            # the flow module would pad further, and its grid would then cover more than the masks'
            raise ValueError(f"MaskPropagation: frames padded to {tuple(images.shape[-2:])}, not a multiple of "
                             f"MODEL.MOTION.SIZE_DIVISIBILITY={div}; set MODEL.MASK_FORMER.SIZE_DIVISIBILITY "
                             "to a multiple of it so that flow and masks cover the same padded frame")
        flow = self.flow(images, key_images, key_queries, image_sizes)
        return warp_masks(mask_logits, flow, self.warp)

    def losses(self, model, batched_inputs):
        """Weighted Mask2Former losses of the key frames' predictions warped to the labelled frames."""
        missing = [x.get("file_name", "?") for x in batched_inputs if "key_image" not in x]
        if missing:
            raise ValueError(f"MaskPropagation trains on (key frame, labelled frame) pairs but {missing} have no "
                             "'key_image': set INPUT.VIDEO.SAMPLER to 'pair'")
        images = model.preprocess_image([x["image"] for x in batched_inputs])
        key_images = model.preprocess_image([x["key_image"] for x in batched_inputs])
        if key_images.tensor.shape != images.tensor.shape:
            raise ValueError(f"key frames {tuple(key_images.tensor.shape)} and labelled frames "
                             f"{tuple(images.tensor.shape)} of a pair batch differ in size")
        outputs = model.sem_seg_head(model.backbone(key_images.tensor))
        predictions = outputs["aux_outputs"] + [outputs]
        warped = self.propagate(
            torch.stack([p["pred_masks"] for p in predictions], dim=2),
            _raw(model, [x["image"] for x in batched_inputs]).tensor,
            _raw(model, [x["key_image"] for x in batched_inputs]).tensor,
            outputs["queries"],
            images.image_sizes,
        )
        warped = [{"pred_logits": p["pred_logits"], "pred_masks": warped[:, :, i]} for i, p in enumerate(predictions)]
        # MaskFormer's target preparation only needs `device` from the model
        targets = prepare_targets(batched_inputs, images.tensor.shape[-2:], model.device)
        losses = self.criterion({**warped[-1], "aux_outputs": warped[:-1]}, targets)
        weights = self.criterion.weight_dict
        return {k: v * weights[k] for k, v in losses.items() if k in weights}

    def infer(self, model, frame, cache):
        """One frame of a video -> ({"sem_seg": (K, height, width)}, the next KeyFrameCache)."""
        image = frame["image"].to(model.device).float()
        size = tuple(image.shape[-2:])
        output_size = (frame.get("height", size[0]), frame.get("width", size[1]))
        if self.policy.is_key(frame["frame_idx"], cache):
            padded = model.preprocess_image([image])
            outputs = model.sem_seg_head(model.backbone(padded.tensor))
            class_logits, mask_logits = outputs["pred_logits"], outputs["pred_masks"]
            confidence = mask_confidence(class_logits[0], mask_logits[0]) if self.policy.adaptive else None
            cache = KeyFrameCache(
                frame_idx=frame["frame_idx"],
                image=image,
                image_size=size,
                queries=outputs["queries"][0],
                class_logits=class_logits[0],
                mask_logits=mask_logits[0],
                key_confidence=confidence,
            )
        else:
            if size != cache.image_size:
                raise ValueError(f"video {frame['video_id']!r} frame {frame['frame_idx']}: image size {size} differs "
                                 f"from its key frame {cache.frame_idx}'s {cache.image_size}; mask propagation "
                                 "needs every frame of a video at one size")
            padded = _raw(model, [image])
            class_logits = cache.class_logits[None]
            mask_logits = self.propagate(
                cache.mask_logits[None], padded.tensor, _raw(model, [cache.image]).tensor,
                cache.queries[None], [size],
            )
            if self.policy.adaptive:
                cache = replace(cache, last_confidence=mask_confidence(class_logits[0], mask_logits[0]))
        (output,) = semantic_outputs(
            class_logits, mask_logits, padded.tensor.shape[-2:], [size], [output_size],
            self.sem_seg_postprocess_before_inference,
        )
        return output, cache


def _raw(model, images):
    """Unnormalised frames (float 0-255) padded like model.preprocess_image pads them."""
    return ImageList.from_tensors([x.to(model.device).float() for x in images], model.size_divisibility)

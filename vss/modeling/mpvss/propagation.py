"""MPVSS's temporal head: Mask2Former on key frames, flow-warped key masks elsewhere.

Inference (per frame of a video, `infer`): a key frame (see keyframes.KeyFramePolicy) runs
the backbone and Mask2Former head and refreshes the video's KeyFrameCache (`key_frame`); any
other frame estimates per-query flow from (current frame, key frame, key queries) (`key_flow`),
warps the key frame's mask logits with it (`propagate`) and combines them with the key frame's
class logits, through the same semantic path as Mask2Former (`prediction`). These steps are
public so that diagnostics (vss.evaluation.flow_diagnostics) run exactly this inference.

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

from ..finite import FLOW_CAUSE, check_finite
from ..mask2former import build_criterion, semantic_outputs
from ..mask2former.maskformer import check_logits, prepare_targets
from ..frame_plan import FRAME, FramePlan, per_frame_plan
from ..video_segmentor import TEMPORAL_HEAD_REGISTRY
from .flow import FlowEstimator
from .keyframes import KeyFrameCache, KeyFramePolicy, mask_confidence
from .warp import WARPS, shared_flow, warp_masks

PROPAGATIONS = ("flow", "copy")
KEY_POLICIES = ("fixed", "adaptive")


@TEMPORAL_HEAD_REGISTRY.register()
class MaskPropagation(nn.Module):
    # The release saves the whole model with this head's flow module as `motion.*` and its
    # criterion as `criterion.*` (O: mask2former/mpvss.py:78-82); MODEL.WEIGHTS naming them so
    # (an official MPVSS checkpoint) loads renamed (vss.engine.checkpoint).
    weights_renamed = {"motion.": "flow.", "criterion.": "criterion."}
    # What training starts from (hints of vss.engine.weights): the trained model of the nearest
    # base config of another meta-architecture (weights_start_from_base).
    weights_start = "MPVSS starts from a trained per-frame Mask2Former"
    weights_start_from_base = True
    # Why it has no single_frame_opts (vss.engine.temporal_contribution) and what measures its use of time.
    no_single_frame = ("MPVSS carries the key frame's masks, not a state to reset: tools/synthetic_benchmark.py "
                       "scores its propagated frames with its own flow and with the true flow")

    @classmethod
    def start_evaluates(cls, cfg):
        """Whether the checkpoint training starts from evaluates the model too: Copy has no flow module."""
        return cfg.MODEL.MPVSS.PROPAGATION == "copy"

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

    def flow_between(self, images, key_images, key_queries, image_sizes, frames):
        """Backward flow from the current frames to their key frames: (B, Q, 2, hf, wf) in pixels of
        its grid over the padded frames, (B, 1, 2, hf, wf) where one map serves every query (pixel
        flow), None for "copy".

        images, key_images: (B, 3, H, W) raw RGB frames (0-255) padded like the model's input,
        so that the flow and the masks cover the same padded frame. frames: the current frames'
        input dicts, named in the error on a non-finite flow.
        """
        if self.flow is None:
            return None
        div = self.flow.size_divisibility
        if images.shape[-2] % div or images.shape[-1] % div:
            # the flow module would pad further, and its grid would then cover more than the masks'
            raise ValueError(f"MaskPropagation: frames padded to {tuple(images.shape[-2:])}, not a multiple of "
                             f"MODEL.MOTION.SIZE_DIVISIBILITY={div}; set MODEL.MASK_FORMER.SIZE_DIVISIBILITY "
                             "to a multiple of it so that flow and masks cover the same padded frame")
        flow = self.flow(images, key_images, key_queries, image_sizes)
        check_finite(flow, "the flow to the key frame", frames, FLOW_CAUSE)
        return shared_flow(flow)

    def propagate(self, mask_logits, flow):
        """Key-frame mask logits (B, Q, [P,] h, w) moved by `flow` (flow_between's layout, or the
        ground truth in it; None: unchanged)."""
        return mask_logits if flow is None else warp_masks(mask_logits, flow, self.warp)

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
        key_frames = [dict(x, frame_idx=x["key_frame_idx"]) if "key_frame_idx" in x else x for x in batched_inputs]
        check_logits(outputs, key_frames)
        predictions = outputs["aux_outputs"] + [outputs]
        flow = self.flow_between(_raw(model, [x["image"] for x in batched_inputs]).tensor,
                                 _raw(model, [x["key_image"] for x in batched_inputs]).tensor,
                                 outputs["queries"], images.image_sizes, batched_inputs)
        warped = self.propagate(torch.stack([p["pred_masks"] for p in predictions], dim=2), flow)
        warped = [{"pred_logits": p["pred_logits"], "pred_masks": warped[:, :, i]} for i, p in enumerate(predictions)]
        # MaskFormer's target preparation only needs `device` from the model
        targets = prepare_targets(batched_inputs, images.tensor.shape[-2:], model.device)
        return self.criterion.weigh(self.criterion({**warped[-1], "aux_outputs": warped[:-1]}, targets))

    def key_frame(self, model, frame):
        """The key-frame step: Mask2Former on `frame` (an input dict with "image", "frame_idx") ->
        the KeyFrameCache it starts."""
        image = frame["image"].to(model.device).float()
        outputs = model.sem_seg_head(model.backbone(model.preprocess_image([image]).tensor))
        check_logits(outputs, [frame])
        class_logits, mask_logits = outputs["pred_logits"][0], outputs["pred_masks"][0]
        return KeyFrameCache(
            frame_idx=frame["frame_idx"],
            image=_raw(model, [image]).tensor[0],
            image_size=tuple(image.shape[-2:]),
            queries=outputs["queries"][0],
            class_logits=class_logits,
            mask_logits=mask_logits,
            key_confidence=mask_confidence(class_logits, mask_logits) if self.policy.adaptive else None,
        )

    def key_flow(self, model, frame, cache):
        """The propagation step's flow: from `frame` (an input dict with "image") to the key frame of
        `cache`, (1, Q or 1, 2, hf, wf) over the padded frame (see flow_between); None for "copy"."""
        image = frame["image"].to(model.device).float()
        if tuple(image.shape[-2:]) != cache.image_size:
            raise ValueError(f"video {frame.get('video_id')!r} frame {frame.get('frame_idx')}: image size "
                             f"{tuple(image.shape[-2:])} differs from its key frame {cache.frame_idx}'s "
                             f"{cache.image_size}; mask propagation needs every frame of a video at one size")
        if self.flow is None:
            return None
        return self.flow_between(_raw(model, [image]).tensor, cache.image[None], cache.queries[None],
                                 [cache.image_size], [frame])

    def prediction(self, cache, mask_logits, output_size):
        """{"sem_seg": (K, *output_size)} of a frame from the key frame's class logits and `mask_logits`
        (1, Q, hm, wm) (the key frame's own, or warped), through Mask2Former's semantic path."""
        (output,) = semantic_outputs(cache.class_logits[None], mask_logits, cache.padded_size, [cache.image_size],
                                     [output_size], self.sem_seg_postprocess_before_inference)
        return output

    def infer(self, model, frame, cache):
        """One frame of a video -> ({"sem_seg": (K, height, width)}, the next KeyFrameCache)."""
        size = tuple(frame["image"].shape[-2:])
        output_size = (frame.get("height", size[0]), frame.get("width", size[1]))
        if self.policy.is_key(frame["frame_idx"], cache):
            cache = self.key_frame(model, frame)
            mask_logits = cache.mask_logits[None]
        else:
            mask_logits = self.propagate(cache.mask_logits[None], self.key_flow(model, frame, cache))
            if self.policy.adaptive:
                cache = replace(cache, last_confidence=mask_confidence(cache.class_logits, mask_logits[0]))
        return self.prediction(cache, mask_logits, output_size), cache

    # ---- frame kinds (vss.modeling.frame_plan) ----------------------------------------------

    def frame_plan(self):
        k = self.policy.interval
        if k == 1:
            return per_frame_plan("MODEL.MPVSS.KEY_INTERVAL 1: every frame is a key frame", key=FRAME)
        summary = (f"one key frame and one propagated frame counted; per frame: the mean with a key frame every "
                   f"K={k} frames (MODEL.MPVSS.KEY_INTERVAL)")
        if self.policy.adaptive:
            summary += ("; KEY_POLICY adaptive: key frames come at least that often, so this is the least the "
                        "policy costs")
        return FramePlan({0: "key frame", 1: "propagated frame"}, lambda i: 0 if i % k == 0 else 1,
                         tuple(range(k)), summary, key="key frame")

    def frame_kind(self, frame_idx, previous, cache):
        if self.policy.interval == 1:
            return FRAME
        return "key frame" if cache.frame_idx == frame_idx else "propagated frame"


def _raw(model, images):
    """Unnormalised frames (float 0-255) padded like model.preprocess_image pads them."""
    return ImageList.from_tensors([x.to(model.device).float() for x in images], model.size_divisibility)

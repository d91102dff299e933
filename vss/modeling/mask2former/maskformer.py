"""Mask2Former meta-architecture for semantic segmentation (upstream `MaskFormer`)."""
import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, build_sem_seg_head
from detectron2.structures import ImageList
from torch import nn

from ..finite import LOGITS_CAUSE, check_finite
from .criterion import build_criterion
from .semantic import semantic_outputs


def check_logits(outputs, frames):
    """Raise NonFiniteError naming the frames (input dicts) whose final class or mask logits are
    not finite; the auxiliary predictions lead to the final ones, so those are checked alone."""
    for key, what in (("pred_logits", "the class logits"), ("pred_masks", "the mask logits")):
        check_finite(outputs[key], what, frames, LOGITS_CAUSE)


def prepare_targets(batched_inputs, padded_size, device):
    """Per-image {"labels", "masks"} with masks zero-padded to `padded_size` (H, W)."""
    h_pad, w_pad = padded_size
    targets = []
    for x in batched_inputs:
        if "instances" not in x:
            raise ValueError(f"training input {x.get('file_name', '<no file_name>')} has no 'instances'")
        gt = x["instances"].to(device)
        masks = gt.gt_masks.tensor if hasattr(gt.gt_masks, "tensor") else gt.gt_masks
        padded = masks.new_zeros((masks.shape[0], h_pad, w_pad))
        padded[:, : masks.shape[1], : masks.shape[2]] = masks
        targets.append({"labels": gt.gt_classes, "masks": padded})
    return targets


@META_ARCH_REGISTRY.register()
class MaskFormer(nn.Module):
    """Backbone + MaskFormerHead + set criterion; detectron2's list-of-dicts interface.

    Training inputs: dicts with "image" (3, H, W) in the backbone's format (0-255) and
    "instances" with gt_classes (N,) and gt_masks (N, H, W), one mask per class present.
    Returns the weighted losses. Eval inputs: dicts with "image" and optional "height",
    "width"; returns [{"sem_seg": (K, height, width) scores}] ([{"sem_seg_labels": (height,
    width)}] inside `vss.modeling.postprocess.labels_only()`).
    """

    # What training may start without (vss.engine.checkpoint): the heads, from an ImageNet backbone.
    weights_may_miss = ("sem_seg_head.", "criterion.")
    # What training starts from (hints of vss.engine.weights).
    weights_start = ("the per-frame Mask2Former starts from an ImageNet backbone: detectron2's R-50.pkl / R-101.pkl or "
                     "Swin weights converted to detectron2's format (see projects/MPVSS/README.md, \"Initial weights\")")

    @configurable
    def __init__(
        self,
        *,
        backbone,
        sem_seg_head,
        criterion,
        size_divisibility,
        pixel_mean,
        pixel_std,
        sem_seg_postprocess_before_inference=False,
    ):
        """
        Args:
            criterion: SetCriterion; its weight_dict weighs (and selects) the losses.
            size_divisibility: pad inputs to a multiple of this; < 0 uses the backbone's.
            pixel_mean, pixel_std: per-channel normalisation, in the input's value range.
            sem_seg_postprocess_before_inference: crop/resize mask logits before combining
                them with the classes (see semantic.semantic_postprocess).
        """
        super().__init__()
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.criterion = criterion
        self.size_divisibility = backbone.size_divisibility if size_divisibility < 0 else size_divisibility
        self.sem_seg_postprocess_before_inference = sem_seg_postprocess_before_inference
        # not persistent: upstream checkpoints carry no pixel_mean / pixel_std
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg):
        test = cfg.MODEL.MASK_FORMER.TEST
        if test.PANOPTIC_ON or test.INSTANCE_ON or not test.SEMANTIC_ON:
            raise ValueError(
                "MODEL.MASK_FORMER.TEST: vss implements semantic inference only "
                f"(SEMANTIC_ON={test.SEMANTIC_ON}, PANOPTIC_ON={test.PANOPTIC_ON}, "
                f"INSTANCE_ON={test.INSTANCE_ON})"
            )
        backbone = build_backbone(cfg)
        return {
            "backbone": backbone,
            "sem_seg_head": build_sem_seg_head(cfg, backbone.output_shape()),
            "criterion": build_criterion(cfg),
            "size_divisibility": cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "sem_seg_postprocess_before_inference": test.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE,
        }

    @property
    def device(self):
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs):
        """Normalise each "image" and pad the batch (bottom/right, zeros) to size_divisibility."""
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        return ImageList.from_tensors(images, self.size_divisibility)

    def forward_padded(self, images):
        """Raw predictions of a normalised, padded batch (B, 3, Hp, Wp).

        Returns the decoder's dict: "pred_logits" (B, Q, K + 1), "pred_masks"
        (B, Q, Hp/4, Wp/4) mask logits, "aux_outputs", "queries" (B, Q, C) after the
        decoder norm and "mask_features" (B, mask_dim, Hp/4, Wp/4).
        """
        return self.sem_seg_head(self.backbone(images))

    def forward(self, batched_inputs):
        images = self.preprocess_image(batched_inputs)
        outputs = self.forward_padded(images.tensor)
        check_logits(outputs, batched_inputs)
        if self.training:
            targets = prepare_targets(batched_inputs, images.tensor.shape[-2:], self.device)
            return self.weighted_losses(self.criterion(outputs, targets))
        output_sizes = [
            (x.get("height", size[0]), x.get("width", size[1]))
            for x, size in zip(batched_inputs, images.image_sizes)
        ]
        return semantic_outputs(
            outputs["pred_logits"],
            outputs["pred_masks"],
            images.tensor.shape[-2:],
            images.image_sizes,
            output_sizes,
            self.sem_seg_postprocess_before_inference,
        )

    def weighted_losses(self, losses):
        """The criterion's losses weighted (SetCriterion.weigh)."""
        return self.criterion.weigh(losses)

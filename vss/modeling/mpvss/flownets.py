"""FlowNetS: optical flow from a frame pair, to pretrain MPVSS's motion encoder.

The MPVSS paper starts its motion encoder from a FlowNetS trained on FlyingChairs. This
meta-architecture trains that network through train_net.py on frame pairs with ground-truth
flow: it is MPVSS's flow module in its "pixel" variant (`FlowEstimator`: the same input
preparation, motion encoder and FlowNetS coarse-to-fine decoder, nothing duplicated), so
its weights `flow.encoder.*` / `flow.decoder.*` load into MPVSS models through
MODEL.MOTION.WEIGHTS (see motion_weights.py).

Units: every level predicts flow in pixels of the finest flow grid (conv2's, 1/8 of the
frame at the default input scale 0.5), the unit MPVSS warps with. The loss compares
flows in FlowNet's units (DIV_FLOW motion-input pixels) with FlowNet's weights.

Inputs: dicts with "image" and "key_image" (3, H, W) RGB 0-255 and, for training,
"flow" (2, H, W) backward flow from image to key_image in pixels of the image
(channel 0 = dx) and "flow_valid" (H, W) bool. Inference returns {"flow": (2, height,
width)} in pixels of the output size.
"""
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import ImageList
from torch import nn

from ..finite import FLOW_CAUSE, check_finite
from .flow import FlowEstimator
from .flow_loss import multiscale_epe
from .warp import shared_flow, upsample_flow

__all__ = ["FlowNetS"]


@META_ARCH_REGISTRY.register()
class FlowNetS(nn.Module):
    @configurable
    def __init__(self, *, flow, loss_weights=(0.005, 0.01, 0.02, 0.08, 0.32), div_flow=20.0):
        """
        Args:
            flow: a FlowEstimator of flow type "pixel" (FlowNetS's decoder).
            loss_weights: multi-scale EPE weights, finest (conv2's grid) first.
            div_flow: the loss compares flows in units of div_flow motion-input pixels.
        """
        super().__init__()
        if flow.flow_type != "pixel":
            raise ValueError(f"FlowNetS trains the 'pixel' flow (FlowNetS's decoder), but MODEL.MOTION.FLOW_TYPE "
                             f"is {flow.flow_type!r}")
        if flow.decoder.flow_scale != 1.0:
            raise ValueError(f"FlowNetS: MODEL.MOTION.FLOW_SCALE_FACTOR must be 1.0 (all levels predict in one "
                             f"unit), got {flow.decoder.flow_scale}")
        if len(loss_weights) != 5:
            raise ValueError(f"MODEL.FLOWNETS.LOSS_WEIGHTS needs 5 weights (flows at 1/8 .. 1/128 of the frame), "
                             f"got {list(loss_weights)}")
        if div_flow <= 0:
            raise ValueError(f"MODEL.FLOWNETS.DIV_FLOW must be > 0, got {div_flow}")
        self.flow = flow
        self.loss_weights = tuple(loss_weights)
        self.div_flow = div_flow

    @classmethod
    def from_config(cls, cfg):
        return {
            "flow": FlowEstimator(cfg),
            "loss_weights": tuple(cfg.MODEL.FLOWNETS.LOSS_WEIGHTS),
            "div_flow": cfg.MODEL.FLOWNETS.DIV_FLOW,
        }

    @property
    def device(self):
        return next(self.parameters()).device

    def _batch(self, batched_inputs, key):
        missing = [x.get("file_name", "?") for x in batched_inputs if key not in x]
        if missing:
            raise ValueError(f"FlowNetS needs '{key}' in every input (INPUT.VIDEO.SAMPLER 'flow_pair' and a "
                             f"flow-pair dataset provide it); missing for {missing}")
        return ImageList.from_tensors([x[key].to(self.device).float() for x in batched_inputs],
                                      self.flow.size_divisibility)

    def forward(self, batched_inputs):
        """Training: {"loss_flow2".."loss_flow6": weighted EPE terms}; inference: [{"flow": ...}]."""
        images = self._batch(batched_inputs, "image")
        key_images = self._batch(batched_inputs, "key_image")
        if key_images.tensor.shape != images.tensor.shape or key_images.image_sizes != images.image_sizes:
            raise ValueError(f"FlowNetS: the frames of a pair must have one size, got image sizes "
                             f"{images.image_sizes} and key_image sizes {key_images.image_sizes}")
        x = self.flow.prepare_inputs(images.tensor, key_images.tensor, images.image_sizes)
        flows = self.flow.decoder.pixel_flow(self.flow.encoder(x), all_levels=True)
        check_finite(flows[0], "the flow", batched_inputs, FLOW_CAUSE)
        padded = images.tensor.shape[-2:]
        cell = padded[0] // flows[0].shape[-2]
        if (flows[0].shape[-2] * cell, flows[0].shape[-1] * cell) != tuple(padded):
            raise ValueError(f"FlowNetS: the {tuple(padded)} padded frame is not a whole number of flow-grid "
                             f"cells ({tuple(flows[0].shape[-2:])}); check MODEL.MOTION.IMG_SCALE_FACTOR")
        if self.training:
            return self.losses(flows, batched_inputs, cell)
        return self.postprocess(flows[0], batched_inputs, images)

    def pair_flow(self, frame, key_frame):
        """Flow from `frame`'s "image" to `key_frame`'s (input dicts): (1, 1, 2, hf, wf) in pixels of
        its grid over the padded frame (MaskPropagation.key_flow's layout), and that padded size."""
        images, key_images = (self._batch([x], "image") for x in (frame, key_frame))
        flow = self.flow(images.tensor, key_images.tensor, None, images.image_sizes)
        check_finite(flow, "the flow", [frame], FLOW_CAUSE)
        return shared_flow(flow), tuple(images.tensor.shape[-2:])

    def losses(self, flows, batched_inputs, cell):
        target = self._batch(batched_inputs, "flow").tensor
        valid = self._batch(batched_inputs, "flow_valid").tensor > 0.5
        # grid pixels and frame pixels -> FlowNet's units (div_flow motion-input pixels)
        scale = self.flow.img_scale_factor / self.div_flow
        terms = multiscale_epe([f * (cell * scale) for f in flows], target * scale, valid,
                               self.loss_weights, cell)
        return {f"loss_flow{level}": term for level, term in zip(range(2, 7), terms)}

    def postprocess(self, flow, batched_inputs, images):
        """Finest flow -> per input (2, height, width) in pixels of that size (bilinear, as FlowNet's EPE)."""
        flow = upsample_flow(flow, images.tensor.shape[-2:])
        outputs = []
        for x, f, (h, w) in zip(batched_inputs, flow, images.image_sizes):
            size = (x.get("height", h), x.get("width", w))
            outputs.append({"flow": upsample_flow(f[None, :, :h, :w], size)[0]})
        return outputs

"""MPVSS flow module: one flow map per key-frame query, from a (current, key) frame pair.

`FlowEstimator` = input preparation + `MotionEncoder` (FlowNetS) + `MotionDecoder`.
Its state_dict is the official release's (`encoder.*`, `decoder.*`; 40,085,146
parameters for the default config).

Variants (MODEL.MOTION.FLOW_TYPE; the paper's Table 3b and appendices B/E). Parameter
counts at the default config, with the paper's in brackets:

- "query" (the method): query flow fused with the pixel flow. 40,085,146 [40.08M].
- "pixel" ("Optical flow"): a plain FlowNetS, i.e. the encoder plus FlowNetS's own
  coarse-to-fine decoder (deconv widths 512/256/128/64) on the raw encoder levels, no
  transformer; its one flow map is used for every query. 38,675,536 [38.68M].
- "query_learned": flow queries from the key frame, query flow only: no pixel-flow
  decoder, and the fusion conv sees only the query flow (2 -> 2 channels, same init).
  37,555,302 [37.56M].
- "query_random": as "query_learned", but the flow queries do not come from the key
  frame: the stream starts from zeros, so the queries are the learnable `query_embed`
  alone (randomly initialised, trained). No parameter is added, as in the paper
  (37.56M for both). 37,555,302 [37.56M].
- "query_for_pf": the method's decoder (key-frame queries attend jointly with the motion
  tokens), but the warp uses its pixel flow, which has thus "seen" the queries, for
  every query; the per-query head and fusion conv, which would get no gradient, are
  not built. 38,967,632 [the paper lists 40.08M, apparently counting that unused head].
("copy" needs no flow module.)
"""
import torch
from detectron2.config import configurable
from torch import nn
from torch.nn import functional as F

from .motion_decoder import MotionDecoder
from .motion_encoder import MotionEncoder

__all__ = ["FLOW_TYPES", "FlowEstimator"]

# flow type -> decoder parts (see MotionDecoder)
_PARTS = {
    "query": dict(attend=True, pixel_flow=True, query_flow=True),
    "pixel": dict(attend=False, pixel_flow=True, query_flow=False),
    "query_learned": dict(attend=True, pixel_flow=False, query_flow=True),
    "query_random": dict(attend=True, pixel_flow=False, query_flow=True),
    "query_for_pf": dict(attend=True, pixel_flow=True, query_flow=False),
}
FLOW_TYPES = tuple(_PARTS)
# variants whose flow queries start from the key frame's Mask2Former queries
_READS_KEY_QUERIES = ("query", "query_learned", "query_for_pf")


class FlowEstimator(nn.Module):
    """Per-query backward flow from the current frame to the key frame.

    forward(images, key_images, key_queries, image_sizes) -> (B, Q, 2, H', W') with
    H' = H_pad * img_scale_factor / 4 (1/8 of the padded frame by default); channel 0 = dx,
    1 = dy, in pixels of that grid: current pixel p was at p + flow(p) in the key frame.
    """

    @configurable
    def __init__(self, *, flow_type="query", num_queries=100, hidden_dim=256, nheads=8,
                 dim_feedforward=2048, decoder_layers=9, pre_norm=False,
                 encoder_channels=(64, 128, 256, 512, 512, 1024), encoder_kernel_sizes=(7, 5, 5, 3, 3, 3),
                 encoder_num_convs=(1, 1, 2, 2, 2, 2), img_scale_factor=0.5,
                 img_norm_mean=(0.411, 0.432, 0.450), img_norm_std=(255.0, 255.0, 255.0),
                 size_divisibility=32, flow_scale_factor=1.0, fusion_init="official"):
        """
        Args:
            flow_type: one of FLOW_TYPES (see the module docstring).
            num_queries: flow maps per frame; must equal the key frame's query count.
            hidden_dim, nheads, dim_feedforward, decoder_layers, pre_norm: motion decoder.
            encoder_channels, encoder_kernel_sizes, encoder_num_convs: per encoder block,
                output channels, first-conv kernel and number of convs.
            img_scale_factor: the prepared 6-channel input is resized by this.
            img_norm_mean, img_norm_std: RGB; input = frame / std - mean, for both frames.
            size_divisibility: the input is zero-padded to a multiple of this.
            flow_scale_factor: the pixel flow is multiplied by this.
            fusion_init: start of the fusion conv, "official" or "pass_through" (MotionDecoder).
        """
        super().__init__()
        if flow_type not in _PARTS:
            raise ValueError(f"FlowEstimator: MODEL.MOTION.FLOW_TYPE must be one of {FLOW_TYPES}, got {flow_type!r}")
        if len(img_norm_mean) != 3 or len(img_norm_std) != 3:
            raise ValueError(f"FlowEstimator: MODEL.MOTION.FLOW_IMG_NORM_MEAN/STD need 3 (RGB) values, "
                             f"got {list(img_norm_mean)} / {list(img_norm_std)}")
        if size_divisibility < 1:
            raise ValueError(f"FlowEstimator: MODEL.MOTION.SIZE_DIVISIBILITY must be >= 1 (1: no padding), "
                             f"got {size_divisibility}")
        self.flow_type = flow_type
        self.num_queries = num_queries
        self.hidden_dim = hidden_dim
        self.img_scale_factor = img_scale_factor
        self.size_divisibility = size_divisibility
        self.encoder = MotionEncoder(6, encoder_channels, encoder_kernel_sizes, encoder_num_convs)
        self.decoder = MotionDecoder(
            level_channels=encoder_channels[1:], hidden_dim=hidden_dim, nheads=nheads,
            dim_feedforward=dim_feedforward, num_layers=decoder_layers, num_queries=num_queries,
            pre_norm=pre_norm, flow_scale=flow_scale_factor, fusion_init=fusion_init, **_PARTS[flow_type],
        )
        # both frames get the same normalisation; not saved (derived from the config)
        self.register_buffer("flow_img_norm_mean", torch.tensor(list(img_norm_mean) * 2).view(6, 1, 1), False)
        self.register_buffer("flow_img_norm_std", torch.tensor(list(img_norm_std) * 2).view(6, 1, 1), False)

    @classmethod
    def from_config(cls, cfg):
        m = cfg.MODEL.MOTION
        mf = cfg.MODEL.MASK_FORMER
        if m.NUM_QUERIES != mf.NUM_OBJECT_QUERIES:
            raise ValueError(
                f"MODEL.MOTION.NUM_QUERIES ({m.NUM_QUERIES}) must equal MODEL.MASK_FORMER.NUM_OBJECT_QUERIES "
                f"({mf.NUM_OBJECT_QUERIES}): there is one flow map per key-frame mask"
            )
        if m.FLOW_TYPE in _READS_KEY_QUERIES and m.HIDDEN_DIM != mf.HIDDEN_DIM:
            raise ValueError(
                f"MODEL.MOTION.HIDDEN_DIM ({m.HIDDEN_DIM}) must equal MODEL.MASK_FORMER.HIDDEN_DIM "
                f"({mf.HIDDEN_DIM}): flow type {m.FLOW_TYPE!r} starts its flow queries from the key frame's queries"
            )
        return {
            "flow_type": m.FLOW_TYPE,
            "num_queries": m.NUM_QUERIES,
            "hidden_dim": m.HIDDEN_DIM,
            "nheads": m.NHEADS,
            "dim_feedforward": m.DIM_FEEDFORWARD,
            "decoder_layers": m.DECODER_LAYERS,
            "pre_norm": m.PRE_NORM,
            "encoder_channels": tuple(m.ENCODER_CHANNELS),
            "encoder_kernel_sizes": tuple(m.ENCODER_KERNEL_SIZE),
            "encoder_num_convs": tuple(m.ENCODER_NUM_CONVS),
            "img_scale_factor": m.IMG_SCALE_FACTOR,
            "img_norm_mean": tuple(m.FLOW_IMG_NORM_MEAN),
            "img_norm_std": tuple(m.FLOW_IMG_NORM_STD),
            "size_divisibility": m.SIZE_DIVISIBILITY,
            "flow_scale_factor": m.FLOW_SCALE_FACTOR,
            "fusion_init": m.FUSION_INIT,
        }

    @property
    def reads_key_queries(self):
        """Whether forward uses `key_queries` (otherwise they may be None)."""
        return self.flow_type in _READS_KEY_QUERIES

    def forward(self, images, key_images, key_queries, image_sizes):
        """
        Args:
            images, key_images: (B, 3, H, W) current and key frames, float RGB in 0..255
                (padding beyond image_sizes, if any, is ignored).
            key_queries: (B, Q, C) the key frame's final Mask2Former queries (after
                decoder_norm), batch-first; may be None when not `reads_key_queries`.
            image_sizes: B pairs (h, w), the true frame sizes.
        Returns:
            flow (B, Q, 2, H', W'), see the class docstring. Variants with one pixel-flow
            map return it expanded (a view) over the Q queries.
        """
        x = self.prepare_inputs(images, key_images, image_sizes)
        batch = x.shape[0]
        queries = None
        if self.reads_key_queries:
            self._check_queries(key_queries, batch)
            queries = key_queries.transpose(0, 1)  # (Q, B, C) sequence-first
        elif self.decoder.attend:  # query_random: the stream starts from query_embed alone
            queries = x.new_zeros(self.num_queries, batch, self.hidden_dim)
        flow = self.decoder(self.encoder(x), queries)
        return flow.expand(-1, self.num_queries, -1, -1, -1)

    def _check_queries(self, key_queries, batch):
        expected = (batch, self.num_queries, self.hidden_dim)
        if key_queries is None or tuple(key_queries.shape) != expected:
            got = None if key_queries is None else tuple(key_queries.shape)
            raise ValueError(
                f"FlowEstimator ({self.flow_type!r}): key_queries must be (B, MODEL.MOTION.NUM_QUERIES, "
                f"MODEL.MOTION.HIDDEN_DIM) = {expected}, got {got}; NUM_QUERIES must equal "
                f"MODEL.MASK_FORMER.NUM_OBJECT_QUERIES"
            )

    def prepare_inputs(self, images, key_images, image_sizes):
        """The motion encoder's input (B, 6, H_pad * s, W_pad * s), official steps in order.

        [current, key] RGB stacked on channels; x / std - mean; zero-padded to a multiple of
        size_divisibility (0 after normalisation); every row >= h and column >= w of an
        item zeroed; bilinear resize by s = img_scale_factor (align_corners False).
        """
        if images.dim() != 4 or images.shape[1] != 3 or images.shape != key_images.shape:
            raise ValueError(f"FlowEstimator: images and key_images must both be (B, 3, H, W), "
                             f"got {tuple(images.shape)} and {tuple(key_images.shape)}")
        batch, _, height, width = images.shape
        if len(image_sizes) != batch:
            raise ValueError(f"FlowEstimator: {len(image_sizes)} image_sizes for a batch of {batch}")
        for h, w in image_sizes:
            if not (0 < h <= height and 0 < w <= width):
                raise ValueError(f"FlowEstimator: image size {(h, w)} outside the {height}x{width} input")
        x = torch.cat([images, key_images], 1).float() / self.flow_img_norm_std - self.flow_img_norm_mean
        div = self.size_divisibility
        pad_h, pad_w = -height % div, -width % div
        x = F.pad(x, (0, pad_w, 0, pad_h))
        sizes = torch.as_tensor(image_sizes, device=x.device)
        rows = torch.arange(x.shape[2], device=x.device) < sizes[:, :1]  # (B, H_pad)
        cols = torch.arange(x.shape[3], device=x.device) < sizes[:, 1:]  # (B, W_pad)
        x = x * (rows[:, None, :, None] & cols[:, None, None, :])
        return F.interpolate(x, scale_factor=self.img_scale_factor, mode="bilinear", align_corners=False)

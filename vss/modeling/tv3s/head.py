"""TV3S's temporal head (Temporal State Space Sharing): windowed Mamba scans over the frames.

Per clip (training) the backbone and SegFormerHead's fusion run on every frame; the fused maps
(1/4 of the input) are resized to about 1/8, rounded up to a multiple of the window, and go
through Mamba layers alternating unshifted and shifted windows (windows.py). A window over all
frames is one causal scan, so a frame's output depends on its own tokens and on the earlier
frames'. The last frame's output is classified (`linear_pred2`). SegFormerHead's own per-frame
prediction is the auxiliary output.

Inference streams a video one WHOLE frame at a time (MODEL.TV3S.INFERENCE "stream"): the
frame's tokens of every window are scanned starting from the conv and scan states that window
reached at the end of the previous frame. Because every other operation is per token, this
equals scanning the clip of all frames so far in one go, at a cost and memory per frame that do
not depend on the video's length. "clip" reproduces the release's default test instead
(`tools/test.py --mode 0`): every frame is predicted from a fresh clip of itself and the frames
at INPUT.VIDEO.CLIP_OFFSETS before it (the training clip), with the release's clips for a
video's first frames (clips.release_test_clip): the per-frame head's prediction for
the first 3 frames, fixed frame lists for the next 6. "frame" is the paper's single-frame protocol
(its Table S1): the streaming step from a fresh state at every frame, each frame a video of its
own, so that the same weights show what the carried states add.

Names follow the release (`vs.layers.{i}.mixer.*`, `vs.layers.{i}.norm`, `vs.norm_f`,
`linear_pred2`), so its `decode_head.vs.*` / `decode_head.linear_pred2.*` weights load under
`temporal.*`; the per-frame `decode_head.*` parts belong to SegFormerHead (`sem_seg_head.*`).
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.structures import ImageList
from torch import nn

from ..finite import LOGITS_CAUSE, check_finite
from ..frame_plan import FRAME, FramePlan, per_frame_plan
from ..layers import drop_path
from ..postprocess import sem_seg_output
from ..segformer_head import LOSS_AVERAGES, PREDICTOR_INITS, check_choice, cross_entropy, init_predictor
from ..video_segmentor import TEMPORAL_HEAD_REGISTRY
from .clips import check_clip_offsets, release_test_clip
from .mamba import MambaBlock, RMSNorm
from .windows import merge, partition, window_groups

__all__ = ["ShiftedWindowMamba", "StateSpaceSharing", "StreamState", "ClipState", "mamba_map_size"]

INFERENCE_MODES = ("stream", "clip", "frame")
# Clip frames a loss term supervises (MODEL.TV3S.TEMPORAL_LOSS_FRAMES, AUX_LOSS_FRAMES).
LOSS_FRAMES = ("last", "all")


def mamba_map_size(height, width, window_size):
    """Size of the map the Mamba layers scan, from the fused map's (1/4 of the input): half of
    it, rounded up to a multiple of the window (at least one window)."""
    return tuple(max(1, math.ceil((s // 2) / window_size)) * window_size for s in (height, width))


class ShiftedWindowMamba(nn.Module):
    """Mamba blocks over window sequences, even blocks on unshifted windows and odd ones on
    shifted windows, then a final RMSNorm of the residual stream (the release's `vs`)."""

    def __init__(self, d_model, num_layers=8, window_size=20, shift=10, d_state=16, d_conv=4, expand=2,
                 drop_path=0.1, rescale_out_proj=True):
        """
        Args:
            num_layers: Mamba blocks (the paper's N TV3S blocks are 2N layers).
            window_size, shift: see windows.py.
            drop_path: stochastic depth of the last block's output; the k-th block's output
                gets drop_path * k / (num_layers - 1), as in the release.
            rescale_out_proj: divide every out_proj's initial weights by sqrt(num_layers); the
                release keeps nn.Linear's init.
        """
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"TV3S needs at least one Mamba layer (MODEL.TV3S.NUM_BLOCKS >= 1), got {num_layers}")
        window_groups(window_size, window_size, window_size, shift)  # validates size and shift
        self.window_size = window_size
        self.shift = shift
        # Block i drops block i-1's output when adding it to the residual stream; the final
        # norm drops the last block's. Python floats: the module can be built on "meta".
        rates = [0.0] + [drop_path * k / max(num_layers - 1, 1) for k in range(num_layers)]
        self.layers = nn.ModuleList(
            MambaBlock(d_model, drop_path=rates[i], d_state=d_state, d_conv=d_conv, expand=expand)
            for i in range(num_layers)
        )
        self.norm_f = RMSNorm(d_model)
        self.drop_path = rates[-1]
        # mamba-ssm's pre-norm residual init (its MixerModel's, which the release's head does not
        # use): every block adds its output to the residual stream, so out_proj starts
        # 1/sqrt(blocks) smaller to keep that stream's scale.
        if rescale_out_proj:
            with torch.no_grad():
                for layer in self.layers:
                    layer.mixer.out_proj.weight /= math.sqrt(num_layers)

    def layer_shift(self, layer):
        """The window offset of Mamba layer `layer`: the shift on odd layers, none on even ones."""
        return self.shift if layer % 2 else 0

    def groups(self, layer, height, width):
        # int(): under torch.jit.trace (fvcore) sizes are tensors, which would key the cache by
        # identity and cut the map into other groups than a plain run (states would not fit)
        return window_groups(int(height), int(width), self.window_size, self.layer_shift(layer))

    def forward(self, x, states=None):
        """x (B, T, C, H, W): T consecutive frames of B videos (H, W multiples of the window).

        states: None (the videos start here) or what the previous call returned for the frames
        just before these. Returns (y (B, T, C, H, W), states after frame T): per layer, per
        window group (`groups`), a MambaState.
        """
        height, width = x.shape[-2:]
        if states is not None and len(states) != len(self.layers):
            raise ValueError(f"TV3S: states of {len(states)} Mamba layers for {len(self.layers)} layers")
        hidden, residual = x.permute(0, 1, 3, 4, 2), None
        new_states = []
        for i, layer in enumerate(self.layers):
            groups = self.groups(i, height, width)
            layer_states = [None] * len(groups) if states is None else states[i]
            if len(layer_states) != len(groups):
                raise ValueError(f"TV3S: layer {i} has states of {len(layer_states)} window groups, but a "
                                 f"{height}x{width} map has {len(groups)}: the states belong to another map size")
            hiddens = partition(hidden, groups)
            residuals = [None] * len(groups) if residual is None else partition(residual, groups)
            outs = [layer(h, r, s) for h, r, s in zip(hiddens, residuals, layer_states)]
            new_states.append(tuple(s for _, _, s in outs))
            if i + 1 < len(self.layers):
                hidden = merge([h for h, _, _ in outs], groups, height, width)
                residual = merge([r for _, r, _ in outs], groups, height, width)
            else:
                # add + norm are per token: done in the last layer's partition, merged once.
                normed = [self.norm_f(r + drop_path(h, self.drop_path, self.training)) for h, r, _ in outs]
                y = merge(normed, groups, height, width)
        return y.permute(0, 1, 4, 2, 3), tuple(new_states)


@dataclass(frozen=True)
class StreamState:
    """A video's streaming state after a frame.

    Attributes:
        image_size: (H, W) of the video's frames (before padding).
        layers: per Mamba layer, per window group, the MambaState its windows reached.
    """

    image_size: tuple
    layers: tuple


@dataclass(frozen=True)
class ClipState:
    """A video's state in clip mode: the Mamba inputs of the frames later clips may use.

    Attributes:
        image_size: (H, W) of the video's frames (before padding).
        first: frame_idx of the video's first frame.
        frames: ((frame_idx, (1, 1, C, h, w) Mamba input), ...), oldest first.
        early: whether the frame was predicted by the per-frame head alone (no clip yet).
    """

    image_size: tuple
    first: int
    frames: tuple
    early: bool = False


@TEMPORAL_HEAD_REGISTRY.register()
class StateSpaceSharing(nn.Module):
    # What training starts from (hints of vss.engine.weights).
    weights_start = ("TV3S starts from an ImageNet-pretrained encoder converted with `tools/convert_tv3s.py --encoder` "
                     "or from a TV3S checkpoint (see projects/TV3S/README.md)")
    # Config options under which the same weights predict every frame without time, as a video of its
    # own (vss.engine.temporal_contribution): the paper's single-frame protocol.
    single_frame_opts = ("MODEL.TV3S.INFERENCE", "frame")

    @configurable
    def __init__(self, *, num_classes, embed_dim=256, window_size=20, shift=10, num_blocks=4, d_state=16,
                 d_conv=4, expand=2, drop_path=0.1, dropout=0.1, aux_weight=0.5, temporal_weight=1.0,
                 ignore_value=255, inference="stream", clip_offsets=(-9, -6, -3, 0), temporal_loss_frames="last",
                 aux_loss_frames="all", loss_average="valid", predictor_init="normal", rescale_out_proj=True):
        """
        Args:
            num_classes: classifier outputs.
            embed_dim: width of the fused map (the per-frame head's) and of the Mamba layers.
            window_size, shift: windows of the unshifted and shifted layers (windows.py).
            num_blocks: TV3S blocks, each an unshifted and a shifted Mamba layer.
            d_state, d_conv, expand: Mamba hyper-parameters.
            drop_path: stochastic depth (ShiftedWindowMamba).
            dropout: Dropout2d before the classifier.
            aux_weight: weight of the per-frame (SegFormerHead) loss.
            temporal_weight: weight of the loss on the temporal predictions.
            ignore_value: label value excluded from the losses.
            inference: "stream" (carried states), "clip" (a fresh clip per frame) or "frame"
                (a fresh state per frame).
            clip_offsets: clip mode: frame offsets of a clip, <= 0, the current frame (0) last.
            temporal_loss_frames: "last" (the release) or "all": the clip frames whose temporal
                prediction the loss supervises.
            aux_loss_frames: "all" (the VSPW release) or "last" (the Cityscapes release): the clip
                frames whose per-frame prediction the loss supervises.
            loss_average: "valid" or "all" (the release), see segformer_head.cross_entropy; both
                losses average over all supervised frames' pixels at once.
            predictor_init: init of linear_pred2, "normal" or "pytorch" (the release), see
                segformer_head.init_predictor.
            rescale_out_proj: see ShiftedWindowMamba.
        """
        super().__init__()
        if inference not in INFERENCE_MODES:
            raise ValueError(f"MODEL.TV3S.INFERENCE must be one of {INFERENCE_MODES}, got {inference!r}")
        check_choice(temporal_loss_frames, LOSS_FRAMES, "MODEL.TV3S.TEMPORAL_LOSS_FRAMES")
        check_choice(aux_loss_frames, LOSS_FRAMES, "MODEL.TV3S.AUX_LOSS_FRAMES")
        offsets = check_clip_offsets(clip_offsets)
        self.vs = ShiftedWindowMamba(embed_dim, 2 * num_blocks, window_size, shift, d_state, d_conv, expand,
                                     drop_path, rescale_out_proj)
        self.dropout = nn.Dropout2d(dropout)
        self.linear_pred2 = nn.Conv2d(embed_dim, num_classes, 1)
        init_predictor(self.linear_pred2, check_choice(predictor_init, PREDICTOR_INITS,
                                                       "MODEL.SEM_SEG_HEAD.PREDICTOR_INIT"))
        self.window_size = window_size
        self.aux_weight = aux_weight
        self.temporal_weight = temporal_weight
        self.ignore_value = ignore_value
        self.inference = inference
        self.clip_offsets = offsets
        self.temporal_loss_frames = temporal_loss_frames
        self.aux_loss_frames = aux_loss_frames
        self.loss_average = check_choice(loss_average, LOSS_AVERAGES, "MODEL.SEM_SEG_HEAD.LOSS_AVERAGE")

    @classmethod
    def from_config(cls, cfg, input_shape):
        tv3s = cfg.MODEL.TV3S
        return {
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "embed_dim": cfg.MODEL.SEM_SEG_HEAD.EMBED_DIM,
            "window_size": tv3s.WINDOW_SIZE,
            "shift": tv3s.SHIFT,
            "num_blocks": tv3s.NUM_BLOCKS,
            "d_state": tv3s.D_STATE,
            "d_conv": tv3s.D_CONV,
            "expand": tv3s.EXPAND,
            "drop_path": tv3s.DROP_PATH,
            "dropout": tv3s.DROPOUT,
            "aux_weight": tv3s.AUX_WEIGHT,
            "temporal_weight": tv3s.TEMPORAL_WEIGHT,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "inference": tv3s.INFERENCE,
            "clip_offsets": cfg.INPUT.VIDEO.CLIP_OFFSETS,
            "temporal_loss_frames": tv3s.TEMPORAL_LOSS_FRAMES,
            "aux_loss_frames": tv3s.AUX_LOSS_FRAMES,
            "loss_average": cfg.MODEL.SEM_SEG_HEAD.LOSS_AVERAGE,
            "predictor_init": cfg.MODEL.SEM_SEG_HEAD.PREDICTOR_INIT,
            "rescale_out_proj": tv3s.RESCALE_OUT_PROJ,
        }

    # ---- the network -----------------------------------------------------------------------

    @staticmethod
    def fused_maps(model, images):
        """(N, 3, H, W) normalised, padded frames -> SegFormerHead's fused maps (N, C, H/4, W/4)."""
        head = model.sem_seg_head
        if not hasattr(head, "forward_features") or not hasattr(head, "predict"):
            raise ValueError(f"StateSpaceSharing needs a per-frame head with forward_features() and predict() "
                             f"(MODEL.SEM_SEG_HEAD.NAME 'SegFormerHead'), got {type(head).__name__}")
        return head.forward_features(model.backbone(images))

    def mamba_input(self, fused, frames):
        """Fused maps (B * T, C, h, w), b-major -> (B, T, C, h2, w2) at `mamba_map_size`."""
        size = mamba_map_size(*fused.shape[-2:], self.window_size)
        if tuple(fused.shape[-2:]) != size:
            fused = F.interpolate(fused, size=size, mode="bilinear", align_corners=False)
        return fused.reshape(-1, frames, *fused.shape[1:])

    def classify(self, features, size):
        """Mamba outputs of frames (N, C, h2, w2) -> class logits (N, K) resized to `size`."""
        logits = self.linear_pred2(self.dropout(features))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)

    # ---- training --------------------------------------------------------------------------

    def losses(self, model, batched_inputs):
        missing = [x.get("file_name", "?") for x in batched_inputs if "images" not in x or "sem_segs" not in x]
        if missing:
            raise ValueError(f"StateSpaceSharing trains on clips but {missing} have no 'images'/'sem_segs': set "
                             "INPUT.VIDEO.SAMPLER to 'clip'")
        lengths = {len(x["images"]) for x in batched_inputs} | {len(x["sem_segs"]) for x in batched_inputs}
        if len(lengths) != 1:
            raise ValueError(f"clips of one batch must have equal lengths of images and labels, got {sorted(lengths)}")
        frames = lengths.pop()
        images = model.preprocess_image([image.float() for x in batched_inputs for image in x["images"]])
        targets = ImageList.from_tensors(
            [label for x in batched_inputs for label in x["sem_segs"]], model.size_divisibility,
            pad_value=self.ignore_value,
        ).tensor.to(model.device)
        if targets.shape[-2:] != images.tensor.shape[-2:]:
            raise ValueError(f"clip labels {tuple(targets.shape[-2:])} and frames {tuple(images.tensor.shape[-2:])} "
                             "differ in size")
        # One backbone/fusion pass over all B * T frames: the fusion BN's batch statistics
        # cover every frame, as the release's SyncBN does.
        fused = self.fused_maps(model, images.tensor)
        aux, aux_targets = model.sem_seg_head.predict(fused), targets  # b-major, like y
        if self.aux_loss_frames == "last":
            aux, aux_targets = aux[frames - 1 :: frames], targets[frames - 1 :: frames]
        y, _ = self.vs(self.mamba_input(fused, frames))
        if self.temporal_loss_frames == "all":
            temporal, temporal_targets = self.classify(y.flatten(0, 1), fused.shape[-2:]), targets
        else:
            temporal, temporal_targets = self.classify(y[:, -1], fused.shape[-2:]), targets[frames - 1 :: frames]
        clips = len(batched_inputs)
        check_finite(aux.reshape(clips, -1), "the per-frame head's class logits", batched_inputs, LOGITS_CAUSE)
        check_finite(temporal.reshape(clips, -1), "the class logits", batched_inputs, LOGITS_CAUSE)
        return {
            "loss_sem_seg_aux": self.aux_weight * self.cross_entropy(aux, aux_targets),
            "loss_sem_seg": self.temporal_weight * self.cross_entropy(temporal, temporal_targets),
        }

    def cross_entropy(self, logits, targets):
        return cross_entropy(logits, targets, self.ignore_value, self.loss_average)

    # ---- inference -------------------------------------------------------------------------

    def infer(self, model, frame, state):
        """One whole frame of a video -> ({"sem_seg": (K, height, width)}, the video's next state)."""
        image = frame["image"].to(model.device).float()
        size = tuple(image.shape[-2:])
        if state is not None and state.image_size != size:
            raise ValueError(f"video {frame.get('video_id')!r} frame {frame.get('frame_idx')}: image size {size} "
                             f"differs from its earlier frames' {state.image_size}; TV3S carries states across "
                             "a video's frames, which need one size")
        images = model.preprocess_image([image])
        fused = self.fused_maps(model, images.tensor)
        x = self.mamba_input(fused, 1)
        if self.inference == "stream":
            y, layers = self.vs(x, None if state is None else state.layers)
            state = StreamState(image_size=size, layers=layers)
        elif self.inference == "frame":  # the streaming step from a fresh state; nothing carried to the next frame
            y, _ = self.vs(x)
            state = None
        else:
            first = frame["frame_idx"] if state is None else state.first
            stored = (() if state is None else state.frames) + ((frame["frame_idx"], x),)
            clip = self._clip(stored, frame["frame_idx"], first)
            state = ClipState(image_size=size, first=first, frames=self._still_needed(stored, frame["frame_idx"]),
                              early=clip is None)
            if clip is None:  # the release's first frames of a video: the per-frame head alone
                return self._outputs(model.sem_seg_head.predict(fused), images, [frame], "the per-frame head's "
                                     "class logits")[0], state
            y, _ = self.vs(torch.cat(clip, dim=1))
        logits = self.classify(y[:, -1], fused.shape[-2:])
        return self._outputs(logits, images, [frame])[0], state

    def infer_clip(self, model, frames):
        """One forward over a clip (consecutive frames of one video, fresh state): every frame's
        prediction from itself and the clip's earlier frames, as a list of outputs."""
        images = model.preprocess_image([f["image"].to(model.device).float() for f in frames])
        fused = self.fused_maps(model, images.tensor)
        y, _ = self.vs(self.mamba_input(fused, len(frames)))
        logits = self.classify(y[0], fused.shape[-2:])
        return self._outputs(logits, images, frames)

    # ---- frame kinds (vss.modeling.frame_plan) ----------------------------------------------

    def frame_plan(self):
        if self.inference == "stream":
            return FramePlan({1: "streaming step"}, lambda i: 1 if i > 0 else None, (1,),
                             "one streaming step counted (frame 1, after a first frame that starts the carried "
                             "states): every later frame costs the same", start_kinds={0: "first frame"})
        if self.inference == "frame":
            return per_frame_plan("MODEL.TV3S.INFERENCE frame: every frame is a streaming step from a fresh state")
        k = self._first_clip_position()
        return FramePlan({k: "clip frame"}, lambda i: k if i >= k else None, (k,),
                         f"one frame counted (frame {k}, the first with a whole clip: every later frame scans a "
                         f"clip of the same length; frames 0..{k - 1} of the release's clip test use the per-frame "
                         "head alone and cost less)", start_kinds={0: "early frame"})

    def frame_kind(self, frame_idx, previous, state):
        if self.inference == "stream":
            return "first frame" if previous is None else "streaming step"
        if self.inference == "frame":
            return FRAME
        return "early frame" if state.early else "clip frame"

    def _first_clip_position(self):
        """The position in its video of the first frame the release's clip test scans a clip for (the
        clips only grow with the position, so every later frame has one)."""
        offsets = self.clip_offsets
        return next(p for p in range(-offsets[0] + 1) if release_test_clip(p, offsets, list(range(p + 1)), 0))

    def _clip(self, stored, frame_idx, first):
        """The Mamba inputs of the release's test clip of frame `frame_idx` (release_test_clip), or
        None where the release uses the per-frame head; `stored` holds what `_still_needed` kept."""
        inputs = dict(stored)
        indices = release_test_clip(frame_idx, self.clip_offsets, sorted(inputs), first)
        return None if indices is None else [inputs[i] for i in indices]

    def _still_needed(self, stored, frame_idx):
        """The stored frames a later frame's clip may pick: those within the clip's reach, and the
        latest one before it (which stands in for missing frames there)."""
        reach = frame_idx + min(self.clip_offsets)
        older = [s for s in stored if s[0] <= reach]
        return tuple(older[-1:] + [s for s in stored if s[0] > reach])

    @staticmethod
    def _outputs(logits, images, frames, what="the class logits"):
        """Logits (N, K, h, w) at 1/4 of the padded frames of the input dicts `frames` ->
        [{"sem_seg": (K, height, width)}] (labels inside `labels_only()`, see
        postprocess.sem_seg_output); an error naming the frames whose logits are not finite."""
        check_finite(logits, what, frames, LOGITS_CAUSE)
        logits = F.interpolate(logits, size=images.tensor.shape[-2:], mode="bilinear", align_corners=False)
        outputs = []
        for scores, image_size, frame in zip(logits, images.image_sizes, frames):
            height = frame.get("height", image_size[0])
            width = frame.get("width", image_size[1])
            outputs.append(sem_seg_output(scores, image_size, height, width))
        return outputs

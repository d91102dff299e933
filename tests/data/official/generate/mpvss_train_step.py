#!/usr/bin/env python
"""Regenerate tests/data/official/mpvss_train_step.pt from the official MPVSS release.

One MPVSS training step as the release takes it (mask2former/mpvss.py, training branch of
MPVSS.forward; train_net_vss.py Trainer.build_optimizer), on CPU, one thread, in float64:
a (key, current) frame pair -> the flow module -> every key-frame prediction warped
(mmtrack's flow_warp_feats) -> the set criterion with the release's weights -> backward
-> one AdamW step with full-model gradient clipping, after the release's lr scheduler
has set iteration 0's learning rate.

float64 (weights and inputs drawn in float32, exact in float64), the set criterion in float32
(`criterion_in_float32`): in float32 the step amplifies round-off through its discontinuities
(ReLU kinks, the warp's pixel cells, the importance sampling's top-k): 2e-7 relative noise on
the flow moved gradients by up to 6e-4, so another machine's float32 kernels would fail a 1e-5
comparison with no code difference. Stored references are float32 (1e-5 checks), the flow float64.

  python mpvss_train_step.py --official /path/to/ziplab/MPVSS --mmtrack /path/to/open-mmlab/mmtracking \
      [--out tests/data/official/mpvss_train_step.pt]

Nothing of the release is copied here: its modules are imported from --official (its
train_net_vss.py's build_optimizer is compiled from that file), and flow_warp_feats from
--mmtrack's mmtrack/core/motion/flow.py. What does not import on CPU is replaced:
- the backbone, pixel decoder and transformer decoder layers: the fixture gives every
  decoder layer's output and the mask features directly (random, seeded); the release's
  own MPVSSTransformerDecoder.forward_prediction_heads / _set_aux_loss turn them into
  predictions with the trainable class_embed / mask_embed;
- mmcv: ConvModule (conv, then LeakyReLU(inplace) when asked; 'Conv' = Conv2d, 'deconv' =
  ConvTranspose2d, state names `conv.*`) and BaseModule (nn.Module);
- addict.Dict (only used at inference).
The weights follow `fixture_weights` (as tests/data/official/mpvss_flow_official.pt).
Run with the vss venv (detectron2 0.6): the paths of the two checkouts are all it needs.
"""
import argparse
import ast
import copy
import importlib.util
import itertools
import os
import sys
import types
from typing import Any, Dict, List, Set

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from weights_recipe import recipe_weights  # noqa: E402  (the sibling module, also when imported by the tests)

# Small config (the release reads each of these from its config; hidden 256 is fixed by its
# hard-coded 386-channel deconvolutions). Everything else is the release's VSPW R50 config.
SETTINGS = {
    "batch_size": 2,
    "image_height": 60,  # padded to 64 x 96 (a multiple of 32) on both sides
    "image_width": 90,
    "num_queries": 10,
    "num_classes": 124,
    "mask_dec_layers": 10,  # MODEL.MASK_FORMER.DEC_LAYERS: 10 predictions (9 auxiliary)
    "hidden_dim": 256,
    "mask_dim": 64,  # MODEL.SEM_SEG_HEAD.MASK_DIM (VSPW: 256)
    "motion_decoder_layers": 3,  # the release reads MODEL.DECODER_LAYERS (VSPW: 9)
    "motion_dim_feedforward": 64,  # VSPW: 2048
    "encoder_inplanes": [6, 64, 128, 256, 32, 32],  # VSPW: 6, 64, 128, 256, 512, 512
    "seed_flow_weights": 21,
    "seed_head_weights": 22,
    "seed_inputs": 23,
    "seed_criterion": 24,  # torch.manual_seed right before the training forward
    "seed_step_grads": 25,  # the gradients of the optimizer-step check (`step_gradients`)
}
LR_ITERS = [0, 1, 1000, 45000, 89999]
FULL_MAX = 4096  # tensors up to this size are stored whole, larger ones as `probes`
PROBE_SEED = 5


def fixture_weights(template, seed):
    """The fixtures' weight recipe (weights_recipe.py) for the tensors of a state dict."""
    return recipe_weights({name: t.shape for name, t in template.items()}, seed)


def weights_check(weights):
    """(N, 2) per-tensor [sum, sum |w|] in sorted name order."""
    return torch.tensor([[float(weights[k].double().sum()), float(weights[k].double().abs().sum())]
                         for k in sorted(weights)])


def step_gradients(flow_params, embed_params, seed):
    """The gradients the optimizer step is checked with: `fixture_weights` (float64) of the flow
    module's (seed) and the trained class/mask embeddings' parameters (seed + 1), by their names there.

    Not the backward's: where a clipped gradient is far below AdamW's eps (1e-8) the update is
    lr * g / eps, which turns the float32 criterion's round-off into 1e-5 relative update noise.
    """
    return [{k: v.double() for k, v in fixture_weights(params, s).items()}
            for params, s in ((flow_params, seed), (embed_params, seed + 1))]


def probes(t, k=256):
    """A tensor too large to store, as: its values at k fixed positions, its norm and max |.|,
    and its projections on 2 seeded N(0, 1) vectors (so every element takes part)."""
    flat = t.detach().double().flatten()
    g = torch.Generator().manual_seed(PROBE_SEED)
    index = torch.randperm(flat.numel(), generator=g)[:k].clone()
    directions = torch.randn(2, flat.numel(), generator=g, dtype=torch.float64)
    return {"index": index, "values": flat[index].float(), "proj": directions @ flat,
            "norm": flat.norm(), "absmax": flat.abs().max()}


def record(t):
    """A tensor whole (float32) when small, else its probes."""
    return t.detach().float().clone() if t.numel() <= FULL_MAX else probes(t)


# ----------------------------------------------------------------------------- stubs
def _module(name, **attrs):
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    sys.modules[name] = m
    return m


def _package(name, path):
    """A package whose __init__ is not run (the release's pull in CUDA ops and datasets)."""
    return _module(name, __path__=[path])


class ConvModule(nn.Module):
    """mmcv 1.x ConvModule as the release uses it: conv (+ LeakyReLU inplace); no norm."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias="auto", conv_cfg=None, norm_cfg=None, act_cfg=dict(type="ReLU"), inplace=True):
        super().__init__()
        assert norm_cfg is None
        conv = {"Conv": nn.Conv2d, "deconv": nn.ConvTranspose2d}[(conv_cfg or {"type": "Conv"})["type"]]
        self.conv = conv(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, bias=bias if bias != "auto" else True)
        if act_cfg is None:
            self.activate = None
        else:
            assert act_cfg["type"] == "LeakyReLU"
            self.activate = nn.LeakyReLU(act_cfg.get("negative_slope", 0.01), inplace=inplace)

    def forward(self, x):
        x = self.conv(x)
        return x if self.activate is None else self.activate(x)


def install_stubs(official, mmtrack):
    _module("addict", Dict=dict)
    _module("mmcv")
    _module("mmcv.cnn")
    _module("mmcv.cnn.bricks", ConvModule=ConvModule)
    _module("mmcv.runner", BaseModule=nn.Module)
    spec = importlib.util.spec_from_file_location("mmtrack_flow", os.path.join(mmtrack, "mmtrack/core/motion/flow.py"))
    flow = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(flow)
    _module("mmtrack")
    _module("mmtrack.core")
    _module("mmtrack.core.motion", flow_warp_feats=flow.flow_warp_feats)
    root = os.path.join(official, "mask2former")
    _package("mask2former", root)
    _package("mask2former.modeling", os.path.join(root, "modeling"))
    _package("mask2former.modeling.transformer_decoder", os.path.join(root, "modeling/transformer_decoder"))


def release_build_optimizer(official):
    """Trainer.build_optimizer of the release's train_net_vss.py, compiled from that file."""
    path = os.path.join(official, "train_net_vss.py")
    tree = ast.parse(open(path).read(), path)
    trainer = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Trainer")
    fn = next(n for n in trainer.body if isinstance(n, ast.FunctionDef) and n.name == "build_optimizer")
    fn.decorator_list = []  # a classmethod there; cls is unused
    from detectron2.solver.build import maybe_add_gradient_clipping
    scope = dict(torch=torch, copy=copy, itertools=itertools, List=List, Dict=Dict, Any=Any, Set=Set,
                 maybe_add_gradient_clipping=maybe_add_gradient_clipping)
    exec(compile(ast.Module(body=[fn], type_ignores=[]), path, "exec"), scope)
    return lambda cfg, model: scope["build_optimizer"](None, cfg, model)


# ----------------------------------------------------------------------------- inputs
def make_inputs(s):
    g = torch.Generator().manual_seed(s["seed_inputs"])
    b, h, w, q, c = s["batch_size"], s["image_height"], s["image_width"], s["num_queries"], s["hidden_dim"]
    # smooth frames; the current frame is the key frame moved by a few pixels plus noise
    base = torch.rand(b, 3, 8, 12, generator=g)
    key = nn.functional.interpolate(base, size=(h + 8, w + 8), mode="bilinear", align_corners=False)
    key = key + 0.1 * torch.rand(key.shape, generator=g)
    key_image = (255 * key[..., 4:4 + h, 4:4 + w].clamp(0, 1)).round().to(torch.uint8)
    image = (255 * (key[..., 1:1 + h, 6:6 + w] + 0.05 * torch.randn(b, 3, h, w, generator=g)).clamp(0, 1))
    image = image.round().to(torch.uint8)
    # labels of the current frame (VSPW ids after the release's "reduce zero label"): blocks
    # of a few classes, an ignored band and scattered ignored pixels
    classes = torch.tensor([0, 5, 17, 42, 88, 123])
    blocks = classes[torch.randint(len(classes), (b, 3, 5), generator=g)]
    labels = blocks.repeat_interleave(20, 1).repeat_interleave(18, 2)[:, :h, :w].clone()
    labels[:, 40:46, 10:50] = 255
    labels[torch.rand(labels.shape, generator=g) < 0.03] = 255
    pad_h, pad_w = -h % 32, -w % 32
    return {
        "image": image,
        "key_image": key_image,
        "labels": labels.to(torch.uint8),
        # every Mask2Former decoder layer's output before decoder_norm, (layer, Q, B, C), and
        # the pixel decoder's mask features at 1/4 of the padded frame
        "decoder_outputs": torch.randn(s["mask_dec_layers"], q, b, c, generator=g),
        "mask_features": 0.2 * torch.randn(b, s["mask_dim"], (h + pad_h) // 4, (w + pad_w) // 4, generator=g),
    }


def release_targets(labels, ignore=255):
    """The release's mapper (mask_former_video_semantic_dataset_mapper.py:283-300): one mask per
    class present, classes np.unique-sorted, ignore excluded."""
    from detectron2.structures import Instances
    out = []
    for lab in labels.numpy():
        classes = np.unique(lab)
        classes = classes[classes != ignore]
        inst = Instances(lab.shape)
        inst.gt_classes = torch.tensor(classes, dtype=torch.int64)
        inst.gt_masks = torch.stack([torch.from_numpy(lab == c) for c in classes])
        out.append(inst)
    return out


# ----------------------------------------------------------------------------- the release
def release_cfg(official, s):
    from detectron2.config import get_cfg
    from detectron2.projects.deeplab import add_deeplab_config
    from mask2former.config import add_maskformer2_config
    cfg = get_cfg()
    add_deeplab_config(cfg)
    add_maskformer2_config(cfg)
    cfg.merge_from_file(os.path.join(official, "configs/vspw/video-semantic-segmentation/MPVSS-VSPW-R50.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.DECODER_LAYERS = s["motion_decoder_layers"]  # read by MotionDec, defined nowhere
    cfg.MODEL.MOTION.REDUCE_FACTOR = 1.0  # read by MPVSS.from_config, defined nowhere, unused
    cfg.MODEL.MOTION.FLOW_INPUT = 0
    cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES = s["num_queries"]
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = s["mask_dim"]
    cfg.MODEL.MOTION.NUM_FLOW_QUERIES = s["num_queries"]
    cfg.MODEL.MOTION.DIM_FEEDFORWARD = s["motion_dim_feedforward"]
    cfg.MODEL.MOTION.ENCODER_INPLANES = tuple(s["encoder_inplanes"])
    inplanes = s["encoder_inplanes"]
    cfg.MODEL.MOTION.IN_CHANNELS = [inplanes[4], inplanes[5], 2 * inplanes[5]]
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == s["num_classes"]
    assert cfg.MODEL.MASK_FORMER.DEC_LAYERS == s["mask_dec_layers"]
    return cfg


def build_release(cfg, inputs, s):
    import mask2former.mpvss as mpvss
    from detectron2.layers import ShapeSpec
    from mask2former.modeling.transformer_decoder.decoder_layers import MLP
    from mask2former.modeling.transformer_decoder.mpvss_transformer_decoder import MPVSSTransformerDecoder

    class Backbone(nn.Module):  # features are not needed: the head below ignores them
        size_divisibility = 0

        def forward(self, x):
            return {}

        def output_shape(self):  # R50's; MotionDec only stores it
            return {f"res{i}": ShapeSpec(channels=256 * 2 ** (i - 2), stride=2 ** i) for i in (2, 3, 4, 5)}

    class Predictor(nn.Module):  # the release decoder's prediction heads and their inputs
        def __init__(self):
            super().__init__()
            c = s["hidden_dim"]
            self.decoder_norm = nn.LayerNorm(c)
            self.class_embed = nn.Linear(c, s["num_classes"] + 1)
            self.mask_embed = MLP(c, c, cfg.MODEL.SEM_SEG_HEAD.MASK_DIM, 3)
            self.num_heads = cfg.MODEL.MASK_FORMER.NHEADS
            self.mask_classification = True

    class Head(nn.Module):
        num_classes = s["num_classes"]

        def __init__(self):
            super().__init__()
            self.predictor = Predictor()
            self.record = {}

        def forward_pixel_decoder(self, features):
            return inputs["mask_features"].double(), None, []

        def forward_decoder_output(self, multi_scale_features, mask_features):
            classes, masks = [], []
            for output in inputs["decoder_outputs"].double():
                c, m, _, query_out = MPVSSTransformerDecoder.forward_prediction_heads(
                    self.predictor, output, mask_features, attn_mask_target_size=mask_features.shape[-2:])
                classes.append(c)
                masks.append(m)
            self.record.update(key_logits=classes, key_masks=masks, query_out=query_out)
            return classes, masks, query_out

        def get_aux_loss(self, outputs_class, outputs_seg_masks):
            return MPVSSTransformerDecoder._set_aux_loss(self.predictor, outputs_class, outputs_seg_masks)

        def get_mask_classfication_flag(self):
            return True

    head = Head()
    mpvss.build_backbone = lambda cfg: Backbone()
    mpvss.build_sem_seg_head = lambda cfg, shape: head
    return mpvss.MPVSS(cfg), head


def criterion_in_float32(criterion, args):
    """The release's criterion runs in float32 (its point coordinates are float32, which
    grid_sample cannot mix with float64 masks): its inputs are cast, as a float32 run has them."""
    outputs, targets = args
    cast = lambda o: {k: o[k].float() for k in ("pred_logits", "pred_masks")}
    return {**cast(outputs), "aux_outputs": [cast(o) for o in outputs["aux_outputs"]]}, targets


def lr_at(scheduler, iters):
    """The scheduler's lr (first group) at each iteration (its closed form, no stepping)."""
    import warnings
    last = scheduler.last_epoch
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for it in iters:
            scheduler.last_epoch = it
            out.append(scheduler.get_lr()[0])
    scheduler.last_epoch = last
    return torch.tensor(out, dtype=torch.float64)


def generate(official, mmtrack):
    install_stubs(official, mmtrack)
    from detectron2.projects.deeplab import build_lr_scheduler
    s = dict(SETTINGS)
    cfg = release_cfg(official, s)
    inputs = make_inputs(s)
    model, head = build_release(cfg, inputs, s)
    flow_weights = fixture_weights(model.motion.state_dict(), s["seed_flow_weights"])
    model.motion.load_state_dict(flow_weights, strict=True)
    head_weights = fixture_weights(head.predictor.state_dict(), s["seed_head_weights"])
    head.predictor.load_state_dict(head_weights, strict=True)
    model.motion.double()
    head.predictor.double()

    # the release's optimizer sets requires_grad (MODEL.FINETUNE) and builds the groups
    optimizer = release_build_optimizer(official)(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)
    names = {p: n for n, p in model.named_parameters()}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    groups = {names[g["params"][0]]: (g["lr"], g["weight_decay"]) for g in optimizer.param_groups}
    assert all(len(g["params"]) == 1 for g in optimizer.param_groups) and sorted(groups) == sorted(trainable)

    h, w = s["image_height"], s["image_width"]
    batched = [{"image": inputs["image"][b], "ref_image": inputs["key_image"][b], "height": h, "width": w,
                "instances": inst} for b, inst in enumerate(release_targets(inputs["labels"]))]
    seen, matches = {}, []
    model.motion.register_forward_hook(lambda m, args, out: seen.update(flow=out))
    model.criterion.register_forward_pre_hook(lambda m, args: seen.update(outputs=args[0], targets=args[1]))
    model.criterion.register_forward_pre_hook(criterion_in_float32)
    model.criterion.matcher.register_forward_hook(lambda m, args, out: matches.append(out))

    model.train()
    torch.manual_seed(s["seed_criterion"])
    losses = model(batched)
    total = sum(losses.values())
    outputs, targets = seen["outputs"], seen["targets"]
    warped = [p["pred_masks"] for p in outputs["aux_outputs"]] + [outputs["pred_masks"]]
    # the gradients where the step's parts meet, to check each part on the release's inputs
    meeting = [seen["flow"], *warped, *head.record["key_masks"], *head.record["key_logits"]]
    for t in meeting:
        t.retain_grad()
    optimizer.zero_grad()
    total.backward()
    params = dict(model.named_parameters())
    grads = {n: record(params[n].grad) for n in trainable}
    grad_norm = torch.nn.utils.get_total_norm([params[n].grad for n in trainable])
    flow_grads, embed_grads = step_gradients(
        dict(model.motion.named_parameters()),
        {n: p for n, p in head.predictor.named_parameters() if p.requires_grad}, s["seed_step_grads"])
    for n, g in [*(("motion." + k, v) for k, v in flow_grads.items()),
                 *(("sem_seg_head.predictor." + k, v) for k, v in embed_grads.items())]:
        params[n].grad = g
    assert all(params[n].grad is not None for n in trainable)
    before = {n: params[n].detach().clone() for n in trainable}
    optimizer.step()
    updates = {n: record(params[n].detach() - before[n]) for n in trainable}

    return {
        "settings": s,
        "flow_weights_names": "\n".join(sorted(flow_weights)),
        "flow_weights_check": weights_check(flow_weights),
        "head_weights_names": "\n".join(sorted(head_weights)),
        "head_weights_check": weights_check(head_weights),
        **inputs,
        "target_labels": [t["labels"] for t in targets],
        "target_masks": [t["masks"] for t in targets],
        "key_logits": torch.stack(head.record["key_logits"]).detach().float(),
        "key_masks": torch.stack(head.record["key_masks"]).detach().float(),
        "key_queries": head.record["query_out"].detach().transpose(0, 1).clone(),  # float64: the flow's input
        "flow": seen["flow"].detach(),  # float64: the warp's input
        "warped_masks": torch.stack(warped).detach().float(),
        # d total / d(flow, warped masks, key masks, key class logits)
        "flow_grad": seen["flow"].grad.float(),
        "warped_masks_grad": torch.stack([t.grad for t in warped]).float(),
        "key_masks_grad": torch.stack([t.grad for t in head.record["key_masks"]]).float(),
        "key_logits_grad": torch.stack([t.grad for t in head.record["key_logits"]]).float(),
        # per prediction set as the criterion visits them (final, then auxiliary 0..8), per image
        "matches": [[torch.stack([q, t]) for q, t in m] for m in matches],
        "losses": {k: v.detach() for k, v in losses.items()},
        "total_loss": total.detach(),
        "grads": grads,
        "grad_norm": grad_norm.detach(),
        "lr": {n: lr for n, (lr, _) in groups.items()},
        "weight_decay": {n: wd for n, (_, wd) in groups.items()},
        "scheduled_lr": lr_at(scheduler, LR_ITERS),
        "scheduled_lr_iters": torch.tensor(LR_ITERS),
        "updates": updates,  # one step from `step_gradients`
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official", required=True, help="a checkout of ziplab/MPVSS (5e19a65)")
    p.add_argument("--mmtrack", required=True, help="a checkout of open-mmlab/mmtracking (mmtrack/core/motion/flow.py)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "mpvss_train_step.pt"))
    args = p.parse_args()
    torch.set_num_threads(1)
    fixture = generate(os.path.abspath(args.official), os.path.abspath(args.mmtrack))
    torch.save(fixture, args.out)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.2f} MB); "
          f"total loss {float(fixture['total_loss']):.6g}, grad norm {float(fixture['grad_norm']):.4g}")


if __name__ == "__main__":
    main()

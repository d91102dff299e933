#!/usr/bin/env python
"""Regenerate tv3s_train_step.pt and tv3s_optim_step.pt from the official TV3S code (CPU, float64).

  python tv3s_train_step.py --official <Ashesham/TV3S checkout> --mamba <mamba-ssm 2.3.2.post1 sdist dir> \
      [--mmseg <dir holding mmseg 0.11.0>] [--site <dir of einops, timm 0.4.12, addict, yapf>] --out <dir>

The release's code runs as it is, imported from the checkout; only what a CPU cannot run is
replaced (tests/data/official/README.md lists every shim): mmcv 1.3.0 is the release's own
3rdparty copy with its compiled ops stubbed (none is called), mamba-ssm's `Mamba` runs its slow
path on `selective_scan_ref` and `rms_norm_ref`, and `from IPython import embed` (unused) gets a
placeholder. Nothing here is collected by pytest; the tests read only the .pt files.

tv3s_train_step.pt: one clip batch through the release's TV3S decode head in train mode (both
losses, backward). tv3s_optim_step.pt: one training step of the whole release model (MiT-B1 +
the same small head) with the AdamW that mmcv's optimizer constructor builds from the release
config, at the lrs the constructor assigns. Both run in float64 (weights and inputs float32
values): in float32 the gradients' own rounding error is ~5e-5 (head) to ~2e-4 (backbone)
relative, measured against float64, more than the tests' 1e-5.
"""
import argparse
import contextlib
import importlib
import importlib.machinery
import os
import sys
import types

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from weights_recipe import recipe_weights  # noqa: E402  (the sibling module, also when imported by the tests)

RELEASE_CONFIG = "local_configs/tv3s/B1/tv3s_realshift_w20_s10.b1.480x480.vspw2.160k.py"
# The small head of tv3s_head_official.pt, on 2 clips of 4 frames ([t-9, t-6, t-3, t], target last).
SETTINGS = {"embed_dim": 32, "window_size": 4, "shift": 1, "n_mambas": 4, "num_blocks": 2, "num_classes": 124,
            "num_clips": 4, "batch_size": 2, "height": 64, "width": 96, "d_state": 16, "d_conv": 4, "expand": 2}
MIT_B1 = {"c1": (64, 4), "c2": (128, 8), "c3": (320, 16), "c4": (512, 32)}  # channels, stride
WEIGHT_SEED = {"train_step": 18, "optim_step": 19}
WEIGHTS_RECIPE = ("one torch.Generator().manual_seed(seed); parameter names (official) in sorted() order; "
                  ">=2-D: randn * sqrt(2 / fan_in), fan_in = numel / shape[0]; 1-D names ending in 'weight': "
                  "1 + 0.1 * randn; other 1-D: 0.1 * randn; buffers as built")
IGNORE = 255


def shapes_text(shapes):
    return "\n".join(f"{name}\t{','.join(map(str, shape))}" for name, shape in shapes.items())


def clip_labels(g, n, height, width):
    """Blocky labels (8x8 blocks of random classes), a quarter of the blocks IGNORE, and the
    bottom 8 rows IGNORE on every other frame: the loss averaging sees ignored pixels."""
    blocks = torch.randint(0, SETTINGS["num_classes"], (n, height // 8, width // 8), generator=g)
    blocks[torch.rand(blocks.shape, generator=g) < 0.25] = IGNORE
    labels = blocks.repeat_interleave(8, 1).repeat_interleave(8, 2)
    labels[::2, -8:] = IGNORE
    return labels.to(torch.uint8)


# ---- the official code, imported with CPU shims ---------------------------------------------

def _module(name, **attrs):
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


def _compiled_op(name):
    if name.startswith("__"):
        raise AttributeError(name)

    def op(*args, **kwargs):
        raise NotImplementedError(f"mmcv compiled op {name} is stubbed (CPU fixture generation)")
    return op


def import_official(official, mamba, mmseg=None, site=None):
    """Import the release's decode head, MiT and EncoderDecoder_clips (registered in mmseg)."""
    sys.path[:0] = [os.path.join(official, "3rdparty", "mmcv")] + [p for p in (mmseg, site) if p]
    _module("mmcv._ext", __getattr__=_compiled_op, __spec__=importlib.machinery.ModuleSpec("mmcv._ext", None))
    _module("IPython", embed=None)
    _module("selective_scan_cuda")
    # mamba_ssm.utils.generation imports two names from transformers that InferenceParams does not use
    _module("transformers")
    _module("transformers.generation", GenerateDecoderOnlyOutput=None, TextStreamer=None)
    import mmcv
    assert mmcv.__version__ == "1.3.0", mmcv.__version__
    import mmseg
    assert mmseg.__version__ == "0.11.0", mmseg.__version__
    import mmseg.models  # noqa: F401  (registries)

    # mamba_ssm without its __init__ (which imports the CUDA/Triton-only Mamba2/Mamba3 stacks)
    _module("mamba_ssm", __path__=[os.path.join(mamba, "mamba_ssm")])
    scan = importlib.import_module("mamba_ssm.ops.selective_scan_interface")
    norm = importlib.import_module("mamba_ssm.ops.triton.layer_norm")
    scan.selective_scan_fn = scan.selective_scan_ref

    def rms_norm_fn(x, weight, bias, residual=None, eps=1e-6, dropout_p=0.0, prenorm=False,
                    residual_in_fp32=False, **unused):
        # residual_in_fp32: the residual keeps the input's dtype (float32 or, here, float64)
        assert dropout_p == 0.0 and not unused, unused
        return norm.rms_norm_ref(x, weight, bias, residual=residual, eps=eps, prenorm=prenorm)

    norm.rms_norm_fn = rms_norm_fn
    norm.layer_norm_fn = None  # TV3S uses RMSNorm only
    simple = importlib.import_module("mamba_ssm.modules.mamba_simple")
    assert simple.causal_conv1d_fn is None, "causal_conv1d is installed: the fixture uses the plain conv1d"
    sys.modules["mamba_ssm"].Mamba = simple.Mamba

    # the release's utils/models as a package whose __init__ (every backbone and dataset) is skipped
    _module("tv3s_release", __path__=[os.path.join(official, "utils", "models")])
    for name in ("decode_head", "tv3s_head", "mix_transformer", "encoder_decoder"):
        importlib.import_module(f"tv3s_release.{name}")
    from mmcv import Config
    cfg = Config.fromfile(os.path.join(official, RELEASE_CONFIG))
    head = cfg.model.decode_head
    head.decoder_params.update(embed_dim=SETTINGS["embed_dim"], window_w=SETTINGS["window_size"],
                               window_h=SETTINGS["window_size"], shift_size=SETTINGS["shift"],
                               n_mambas=SETTINGS["n_mambas"])
    assert head.num_clips == SETTINGS["num_clips"] and head.num_classes == SETTINGS["num_classes"]
    cfg.model.pretrained = None
    return cfg


@contextlib.contextmanager
def float64_kept():
    """`.float()` leaves float64 tensors as they are: mamba-ssm's `Mamba` and `selective_scan_ref`
    cast to float32 (for AMP), which would put float32 rounding back into a float64 run."""
    to_float = torch.Tensor.float

    def keep(self, *args, **kwargs):
        return self if self.dtype == torch.float64 else to_float(self, *args, **kwargs)

    torch.Tensor.float = keep
    try:
        yield
    finally:
        torch.Tensor.float = to_float


def no_dropout(model):
    """Dropout2d before both classifiers and every DropPath to 0: train mode made deterministic."""
    from timm.models.layers import DropPath
    for m in model.modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd):
            m.p = 0.0
        elif isinstance(m, DropPath):
            m.drop_prob = 0.0


def noise_only(grads):
    """Names whose gradient is rounding noise (analytically 0): biases whose per-channel constant
    the fusion's train-mode BN subtracts again (linear_c*.proj.bias; the backbone's norm4.bias,
    which only feeds linear_c4). Their sign, and so Adam's first step on them, is arbitrary."""
    scale = max(float(g.abs().max()) for g in grads.values() if g is not None)
    return sorted(n for n, g in grads.items() if g is not None and float(g.abs().max()) < 1e-5 * scale)


def load_recipe(model, seed):
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    model.load_state_dict(recipe_weights(shapes, seed), strict=False)
    return shapes


# ---- (a) the decode head: losses and gradients ----------------------------------------------

def train_step(cfg):
    from mmseg.models import build_head
    s = SETTINGS
    b, t, h, w = s["batch_size"], s["num_clips"], s["height"], s["width"]
    torch.manual_seed(0)
    head = build_head(cfg.model.decode_head)
    head.init_weights()
    shapes = load_recipe(head, WEIGHT_SEED["train_step"])
    no_dropout(head)
    state = {f"decode_head.{k}": v.clone() for k, v in head.state_dict().items()}
    head.double().train()

    g = torch.Generator().manual_seed(5)
    features = {k: torch.randn(b * t, c, h // stride, w // stride, generator=g) for k, (c, stride) in MIT_B1.items()}
    labels = clip_labels(g, b * t, h, w).reshape(b, t, h, w)

    calls = []  # the two loss_decode calls of BaseDecodeHead_clips_flow.losses, in order
    decode_loss = head.loss_decode.forward

    def record(*args, **kwargs):
        calls.append(decode_loss(*args, **kwargs))
        return calls[-1]

    head.loss_decode.forward = record
    losses = head.forward_train([features[k].double() for k in MIT_B1], None, labels[:, :, None].long(), {}, b, t)
    losses = {f"decode.{k}": v for k, v in losses.items()}  # EncoderDecoder_clips' add_prefix
    total = sum(v for k, v in losses.items() if "loss" in k)  # mmseg 0.11 _parse_losses
    total.backward()
    grads = {f"decode_head.{n}": p.grad.to(torch.float32) for n, p in head.named_parameters() if p.grad is not None}
    no_grad = sorted(f"decode_head.{n}" for n, p in head.named_parameters() if p.grad is None)
    bn = head.linear_fuse.bn
    return {
        "settings": dict(s, dtype="float64", dropout=0.0, drop_path=0.0, per_frame_weight=0.5, temporal_weight=1.0, ignore=IGNORE),
        "weights_recipe": WEIGHTS_RECIPE, "weights_seed": WEIGHT_SEED["train_step"],
        "state_dict": state,
        "features": features,
        "labels": labels,
        "losses": {k: float(v) for k, v in losses.items()},
        "per_frame_ce": float(calls[0]), "temporal_ce": float(calls[1]),
        "grads": grads, "no_grad": "\n".join(no_grad), "noise_grad": "\n".join(noise_only(grads)),
        "bn_after": {"running_mean": bn.running_mean.to(torch.float32), "running_var": bn.running_var.to(torch.float32)},
        "param_shapes": shapes_text({f"decode_head.{k}": v for k, v in shapes.items()}),
    }


# ---- (b) the whole model: one optimizer step --------------------------------------------------

KEPT_IN_FULL = ("decode_head.", "backbone.patch_embed1.", "backbone.block1.0.attn.q.", "backbone.block4.1.norm2.")


def optim_step(cfg):
    from mmcv.runner import build_optimizer
    from mmseg.models import build_segmentor
    s = SETTINGS
    b, t, h, w = s["batch_size"], s["num_clips"], s["height"], s["width"]
    torch.manual_seed(0)
    model = build_segmentor(cfg.model, train_cfg=cfg.get("train_cfg"), test_cfg=cfg.get("test_cfg"))
    shapes = load_recipe(model, WEIGHT_SEED["optim_step"])
    no_dropout(model)
    model.double().train()
    optimizer = build_optimizer(model, cfg.optimizer)
    assert cfg.optimizer_config == {}, "the release's OptimizerHook clips nothing"

    g = torch.Generator().manual_seed(6)
    frames = torch.randint(0, 256, (b, t, 3, h, w), generator=g, dtype=torch.uint8)
    labels = clip_labels(g, b * t, h, w).reshape(b, t, h, w)
    # mmseg's Normalize in float64, with the float32 mean/std values a float32 buffer holds;
    # the frames are RGB already (the pipeline's to_rgb)
    norm = cfg.img_norm_cfg
    mean, std = (torch.tensor(v, dtype=torch.float32).double().view(3, 1, 1) for v in (norm.mean, norm.std))
    img = (frames.double() - mean) / std
    metas = [{"img_shape": (h, w, 3), "ori_shape": (h, w, 3), "pad_shape": (h, w, 3), "flip": False}] * b
    out = model.train_step({"img": img, "img_metas": metas, "gt_semantic_seg": labels[:, :, None].long()}, optimizer)
    optimizer.zero_grad()  # mmcv OptimizerHook.after_train_iter
    out["loss"].backward()
    names = {id(p): n for n, p in model.named_parameters()}
    groups = [(names[id(p)], group) for group in optimizer.param_groups for p in group["params"]]
    assert len(groups) == len(names)
    grads = {n: p.grad for n, p in model.named_parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer.step()
    params = dict(model.named_parameters())
    checksum = lambda x: [float(x.double().sum()), float(x.double().abs().sum())]  # noqa: E731
    step = {n: params[n].detach().double() - before[n].double() for n in params}
    order = [n for n, _ in groups]
    return {
        "settings": dict(s, dtype="float64", dropout=0.0, drop_path=0.0),
        "weights_recipe": WEIGHTS_RECIPE, "weights_seed": WEIGHT_SEED["optim_step"],
        "param_shapes": shapes_text(shapes),
        "frames": frames, "labels": labels,
        "log_vars": {k: float(v) for k, v in out["log_vars"].items()},
        "optimizer": f"{type(optimizer).__name__} {dict(cfg.optimizer)}",
        "names": "\n".join(order),
        "lr": torch.tensor([grp["lr"] for _, grp in groups], dtype=torch.float64),
        "weight_decay": torch.tensor([grp["weight_decay"] for _, grp in groups], dtype=torch.float64),
        "no_grad": "\n".join(n for n in order if grads[n] is None),
        "noise_grad": "\n".join(noise_only(grads)),
        "grad_check": torch.tensor([checksum(grads[n]) if grads[n] is not None else [0.0, 0.0] for n in order],
                                   dtype=torch.float64),
        "step_check": torch.tensor([checksum(step[n]) for n in order], dtype=torch.float64),
        "updated": {n: params[n].detach().to(torch.float32) for n in order if n.startswith(KEPT_IN_FULL)},
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official", required=True, help="Ashesham/TV3S checkout (commit 4951815)")
    p.add_argument("--mamba", required=True, help="extracted mamba-ssm 2.3.2.post1 sdist (holds mamba_ssm/)")
    p.add_argument("--mmseg", help="directory holding mmseg 0.11.0 (else the installed one)")
    p.add_argument("--site", help="directory of einops, timm 0.4.12, addict, yapf (else the installed ones)")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg = import_official(args.official, args.mamba, args.mmseg, args.site)
    os.makedirs(args.out, exist_ok=True)
    for name, fn in (("tv3s_train_step.pt", train_step), ("tv3s_optim_step.pt", optim_step)):
        path = os.path.join(args.out, name)
        with float64_kept():
            fixture = fn(cfg)
        torch.save(fixture, path)
        print(f"{path}: {os.path.getsize(path) / 1e6:.2f} MB")


if __name__ == "__main__":
    main()

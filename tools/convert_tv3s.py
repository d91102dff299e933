#!/usr/bin/env python
"""Convert official TV3S checkpoints (mmseg layout) to this project's layout.

The release saves an mmseg model: `backbone.*` (the encoder) and `decode_head.*` (TV3SHead_shift:
SegFormer's fusion, the Mamba stack `vs`, two classifiers). Here the decode head is split between
SegFormerHead (`sem_seg_head.*`, the per-frame part) and the temporal head StateSpaceSharing
(`temporal.*`); the names below them are the release's, so the conversion is a prefix map:

| official prefix                         | ours                          | what                                  |
|-----------------------------------------|-------------------------------|---------------------------------------|
| backbone.                               | backbone.                     | MiT (or Swin) encoder                 |
| decode_head.linear_c1. .. linear_c4.    | sem_seg_head.linear_c1. .. 4. | per-level Linear C_i -> 256 (`proj`)  |
| decode_head.linear_fuse.                | sem_seg_head.linear_fuse.     | 1x1 conv (`conv`) + SyncBN (`bn`)     |
| decode_head.linear_pred.                | sem_seg_head.linear_pred.     | per-frame (auxiliary) classifier      |
| decode_head.vs.                         | temporal.vs.                  | Mamba layers `layers.{i}.mixer/norm`, `norm_f` |
| decode_head.linear_pred2.               | temporal.linear_pred2.        | classifier of the temporal output     |
| decode_head.conv_seg.                   | dropped                       | base-class classifier the forward never uses |

`--encoder` converts an ImageNet-pretrained MiT checkpoint instead (SegFormer's `mit_b*.pth`: the
encoder's names without a prefix, plus the ImageNet classifier `head.*`, dropped): every key gets
`backbone.`, the starting point of TV3S training (`MODEL.WEIGHTS`).

Every key of the input must match a row (an unknown key is an error naming it), and the result is
checked against the model the config builds: every key of ours (with --encoder: of its encoder)
must be produced, with its shape, and nothing else. The output is `{"model": state_dict}` (.pth)
or, for .pkl, detectron2's model-zoo format (numpy arrays and an "__author__" entry, without which
detectron2 0.6 would take the file for a Caffe2 one and rename keys heuristically).

  python tools/convert_tv3s.py --config-file configs/vspw/tv3s/MiT-B1.yaml \\
      TV3S_B1_official.pth output/tv3s_mit_b1_vspw.pth
  python tools/convert_tv3s.py --encoder --config-file configs/vspw/tv3s/MiT-B1.yaml \\
      mit_b1.pth output/mit_b1_imagenet.pkl

Options may stand anywhere on the line. Config overrides (KEY VALUE pairs) follow the two files;
put them after `--` when a value starts with "-" (otherwise it reads as an option):

  python tools/convert_tv3s.py TV3S_B1_city.pth output/tv3s_mit_b1_city.pth --trusted \\
      --config-file configs/vspw/tv3s/MiT-B1.yaml MODEL.SEM_SEG_HEAD.NUM_CLASSES 19
"""
import warnings

# fvcore and detectron2 apply torch.jit.script at import time, which torch 2.x deprecates
# with a FutureWarning on every command; nothing here scripts anything.
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)

import argparse
import os
import pickle
from collections import OrderedDict

import torch
from detectron2.modeling import build_model

from vss.engine import setup_cfg

# (official prefix, ours or None: dropped); the first matching row applies.
KEY_MAP = (
    ("backbone.", "backbone."),
    ("decode_head.linear_c1.", "sem_seg_head.linear_c1."),
    ("decode_head.linear_c2.", "sem_seg_head.linear_c2."),
    ("decode_head.linear_c3.", "sem_seg_head.linear_c3."),
    ("decode_head.linear_c4.", "sem_seg_head.linear_c4."),
    ("decode_head.linear_fuse.", "sem_seg_head.linear_fuse."),
    ("decode_head.linear_pred.", "sem_seg_head.linear_pred."),
    ("decode_head.vs.", "temporal.vs."),
    ("decode_head.linear_pred2.", "temporal.linear_pred2."),
    ("decode_head.conv_seg.", None),
)

# SegFormer's ImageNet MiT files: the encoder without a prefix, and the ImageNet classifier.
ENCODER_KEY_MAP = (
    ("head.", None),
    ("", "backbone."),
)

AUTHOR = "converted from the official release by vss tools/convert_tv3s.py"


def convert(state_dict, key_map=KEY_MAP, expected=None, source="the checkpoint"):
    """Rename `state_dict`'s keys by `key_map` -> OrderedDict of ours (tensors unchanged).

    expected: {our name: shape} the result must have exactly (e.g. `model_keys(cfg)`, or its
        `backbone.*` part for an encoder), or None.
    Raises ValueError listing every key of `source` that no row maps, and, with `expected`,
    every name of ours not produced, produced but unknown, or of another shape.
    """
    converted = OrderedDict()
    unmatched = []
    for key, value in state_dict.items():
        row = next(((old, new) for old, new in key_map if key.startswith(old)), None)
        if row is None:
            unmatched.append(key)
        elif row[1] is not None:
            converted[row[1] + key[len(row[0]):]] = value
    if unmatched:
        known = ", ".join(repr(old) for old, _ in key_map)
        raise ValueError(f"{source}: {len(unmatched)} keys match no prefix of the key map ({known}): "
                         f"{_listing(unmatched)}")
    if expected is not None:
        _check(converted, {k: tuple(s) for k, s in expected.items()}, source)
    return converted


def _check(converted, expected, source):
    missing = [k for k in expected if k not in converted]
    unexpected = [k for k in converted if k not in expected]
    shapes = [f"{k} {tuple(v.shape)} (ours {expected[k]})" for k, v in converted.items()
              if k in expected and tuple(v.shape) != expected[k]]
    problems = []
    if missing:
        problems.append(f"not produced ({len(missing)}): {_listing(missing)}")
    if unexpected:
        problems.append(f"not in our model ({len(unexpected)}): {_listing(unexpected)}")
    if shapes:
        problems.append(f"of another shape ({len(shapes)}): {_listing(shapes)}")
    if problems:
        raise ValueError(f"{source} does not convert to the configured model; keys " + "; ".join(problems))


def _listing(items, limit=20):
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def model_keys(cfg):
    """{name: shape} of the state dict of the model `cfg` builds (built on the meta device: no
    memory, no initialisation)."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "meta"
    with torch.device("meta"):
        model = build_model(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def load_state_dict(path, trusted=False):
    """The tensors of a checkpoint file: its "state_dict" (mmseg), its "model", or the file's
    dict itself when every value is a tensor.

    trusted: unpickle any object (the file's extra entries, e.g. mmseg's "meta", may hold
        objects torch's weights-only loader refuses); only for files from a trusted source.
    """
    try:
        data = torch.load(path, map_location="cpu", weights_only=not trusted)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path}: holds objects besides tensors, which torch's weights-only loader refuses; "
                         "if the file comes from a source you trust, pass --trusted") from e
    if isinstance(data, dict):
        for entry in ("state_dict", "model"):
            if isinstance(data.get(entry), dict):
                data = data[entry]
                break
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        found = sorted(data)[:10] if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path}: expected a state dict of tensors, or a dict holding one under "
                         f"'state_dict' or 'model'; found {found}")
    return data


def save(state_dict, path):
    """.pth: torch {"model": tensors}; .pkl: detectron2 model-zoo {"model": numpy, "__author__"}."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.endswith(".pkl"):
        model = OrderedDict((k, v.detach().cpu().numpy()) for k, v in state_dict.items())
        with open(path, "wb") as f:
            pickle.dump({"model": model, "__author__": AUTHOR}, f)
    elif path.endswith(".pth"):
        torch.save({"model": state_dict}, path)
    else:
        raise ValueError(f"output {path}: the name must end in .pth or .pkl")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="official checkpoint (.pth)")
    parser.add_argument("output", help="converted checkpoint (.pth or .pkl)")
    parser.add_argument("--config-file", required=True, metavar="FILE",
                        help="config of the model the weights are for: the result is checked against it")
    parser.add_argument("--encoder", action="store_true",
                        help="the input is an ImageNet-pretrained encoder (keys without prefix, `head.*` dropped)")
    parser.add_argument("--trusted", action="store_true",
                        help="allow arbitrary pickled objects in the input (only for files you trust)")
    parser.add_argument("opts", nargs="*", metavar="KEY VALUE",
                        help="config overrides after the two files (after `--` when a value starts with '-')")
    # intermixed: options after the positional arguments are still options (a REMAINDER
    # positional would swallow them as overrides)
    args = parser.parse_intermixed_args(argv)
    if not (args.output.endswith(".pth") or args.output.endswith(".pkl")):
        parser.error(f"output {args.output}: the name must end in .pth or .pkl")

    expected = model_keys(setup_cfg(args.config_file, args.opts))
    if args.encoder:
        expected = {k: s for k, s in expected.items() if k.startswith("backbone.")}
    state_dict = load_state_dict(args.input, args.trusted)
    converted = convert(state_dict, ENCODER_KEY_MAP if args.encoder else KEY_MAP, expected, source=args.input)
    save(converted, args.output)
    dropped = len(state_dict) - len(converted)
    print(f"wrote {args.output}: {len(converted)} tensors "
          f"({sum(v.numel() for v in converted.values()):,} values), {dropped} unused keys dropped")


if __name__ == "__main__":
    main()

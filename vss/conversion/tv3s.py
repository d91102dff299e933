"""Official TV3S checkpoints (mmseg layout) -> this project's layout: a prefix map of the keys,
checked against the model a config builds (tools/convert_tv3s.py is its command line; its help
has the table of prefixes).
"""
import os
import pickle
from collections import OrderedDict

import torch
from detectron2.modeling import build_model

__all__ = ["KEY_MAP", "ENCODER_KEY_MAP", "AUTHOR", "convert", "model_keys", "load_state_dict", "save"]

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

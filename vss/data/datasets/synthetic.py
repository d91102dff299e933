"""Synthetic moving-object video in VSPW layout, written by datasets/prepare_synthetic.py.

Registered: synthetic_vss_{train,val} (clean), synthetic_vss_fx_{train,val} (video effects),
synthetic_vss_vspw_{train,val} (the preset calibrated to VSPW) and synthetic_vss_ctx_{train,val}
(the context task: classes shown only in some frames).

The class list lives here so that the generator and the registration agree.
"""
import os

from .vspw import register_vspw_layout

# Background region classes first, then the moving object classes.
SYNTHETIC_BACKGROUND = ["sky", "grass", "road", "wall"]
SYNTHETIC_OBJECTS = ["car", "person", "ball", "bird"]
SYNTHETIC_CLASSES = SYNTHETIC_BACKGROUND + SYNTHETIC_OBJECTS
SYNTHETIC_COLORS = [
    (70, 130, 180), (107, 142, 35), (128, 64, 128), (102, 102, 156),
    (0, 0, 142), (220, 20, 60), (250, 170, 30), (255, 0, 0),
]
# Dataset name prefix (= its folder under the datasets root) -> what `vss.data.synthetic.generate`
# is given for it: the clean set, the video effects preset, the preset calibrated to VSPW (the
# quickstart's) and the context task.
SYNTHETIC_SETS = {"synthetic_vss": {}, "synthetic_vss_fx": {"effects": "effects"},
                  "synthetic_vss_vspw": {"effects": "vspw"}, "synthetic_vss_ctx": {"context": 3}}


def prepare_options(prefix):
    """The datasets/prepare_synthetic.py options that write the set registered under `prefix`."""
    return "".join(f" --{key} {value}" for key, value in SYNTHETIC_SETS[prefix].items())


def register_all_synthetic(datasets_root):
    for prefix in SYNTHETIC_SETS:
        root = os.path.join(datasets_root, prefix)
        how_to_get = (f"generate it with `.venv/bin/python datasets/prepare_synthetic.py{prepare_options(prefix)} "
                      f"--root {root}` "
                      "(seconds; see datasets/README.md)")
        for split in ("train", "val"):
            register_vspw_layout(f"{prefix}_{split}", root, split, SYNTHETIC_CLASSES, SYNTHETIC_COLORS,
                                 how_to_get=how_to_get)

"""Any folder of videos in VSPW layout, with its own class list.

The class list is `<root>/classes.json`::

    {"classes": [{"name": "road", "color": [128, 64, 128]}, ...], "label_offset": 1}

or `<root>/classes.txt` with one class name per line (colours then come from
detectron2's random palette, label offset 1 as in VSPW). `label_offset` is how mask
values map to classes: train id = raw - offset; raw 255 (and raw 0 when the offset
is 1) are ignored.
"""
import json
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.colormap import random_color

from .vspw import register_vspw_layout


def read_class_file(root):
    """(names, colors, label_offset) from `<root>/classes.json` or `<root>/classes.txt`."""
    json_path, txt_path = os.path.join(root, "classes.json"), os.path.join(root, "classes.txt")
    if os.path.isfile(json_path):
        with open(json_path) as f:
            spec = json.load(f)
        try:
            classes = spec["classes"]
            names = [c["name"] for c in classes]
            colors = [tuple(c.get("color") or random_color(rgb=True, maximum=255)) for c in classes]
        except (KeyError, TypeError) as e:
            raise ValueError(f"{json_path}: expected {{'classes': [{{'name': ..., 'color': [r, g, b]}}]}}"
                             f" ({e!r})") from None
        offset = int(spec.get("label_offset", 1))
    elif os.path.isfile(txt_path):
        with open(txt_path) as f:
            names = [line.strip() for line in f if line.strip()]
        colors = [tuple(int(v) for v in random_color(rgb=True, maximum=255)) for _ in names]
        offset = 1
    else:
        raise FileNotFoundError(f"no class list in {root}: expected classes.json or classes.txt "
                                "(see datasets/README.md, 'Your own videos')")
    if not names:
        raise ValueError(f"the class list in {root} is empty")
    if offset not in (0, 1):
        raise ValueError(f"{json_path}: label_offset must be 0 or 1, got {offset}")
    if len(names) + offset > 255:
        raise ValueError(f"{root}: at most {255 - offset} classes fit in 8-bit label PNGs")
    return names, colors, offset


def register_video_folder(name, root, split):
    """Register `<root>` (VSPW layout, split file `<root>/<split>.txt`) as dataset `name`."""
    names, colors, offset = read_class_file(root)
    register_vspw_layout(name, root, split, names, colors, label_offset=offset,
                         how_to_get="see datasets/README.md, 'Your own videos'")


def register_video_folders(entries):
    """Register every [name, root, split] of DATASETS.FOLDERS with `register_video_folder`.

    Setup runs once per process and per tool call, so an entry already registered with the
    same root and split is left as it is; a name taken by another dataset is an error.
    """
    for entry in entries:
        if not (isinstance(entry, (list, tuple)) and len(entry) == 3 and all(isinstance(v, str) for v in entry)):
            raise ValueError(f"DATASETS.FOLDERS: expected [name, root, split] triples of strings, got {entry!r}")
        name, root, split = entry
        if name in DatasetCatalog.list():
            meta = MetadataCatalog.get(name)
            if (meta.get("dataset_root"), meta.get("split")) == (root, split):
                continue
            raise ValueError(f"DATASETS.FOLDERS: dataset name {name!r} is already registered (root "
                             f"{meta.get('dataset_root')!r}, split {meta.get('split')!r}); choose another name")
        if not os.path.isdir(root):
            raise FileNotFoundError(f"DATASETS.FOLDERS: folder {root} of dataset {name!r} does not exist "
                                    "(expected VSPW layout; see datasets/README.md, 'Your own videos')")
        register_video_folder(name, root, split)

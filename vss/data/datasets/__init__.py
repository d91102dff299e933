"""Built-in datasets, registered under `$DETECTRON2_DATASETS` (default ./datasets)."""
import os

from .cityscapes_video import load_cityscapes_video, register_all_cityscapes_video
from .flow_pairs import flow_pair_records, register_all_synthetic_flow, register_flow_pairs
from .folder import read_class_file, register_video_folder
from .synthetic import SYNTHETIC_CLASSES, SYNTHETIC_COLORS, register_all_synthetic
from .vspw import VSPW_CLASSES, load_vspw_layout, register_vspw_layout, register_all_vspw

_root = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
register_all_vspw(_root)
register_all_cityscapes_video(_root)
register_all_synthetic(_root)
register_all_synthetic_flow(_root)

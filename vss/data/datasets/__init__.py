"""Built-in datasets, registered under `$DETECTRON2_DATASETS` (default ./datasets)."""
from .cityscapes_video import load_cityscapes_video, register_all_cityscapes_video
from .flow_pairs import flow_pair_records, register_all_synthetic_flow, register_flow_pairs
from .folder import read_class_file, register_video_folder, register_video_folders
from .root import DATASETS_ROOT
from .synthetic import SYNTHETIC_CLASSES, SYNTHETIC_COLORS, register_all_synthetic
from .vspw import VSPW_CLASSES, load_vspw_layout, register_vspw_layout, register_all_vspw

register_all_vspw(DATASETS_ROOT)
register_all_cityscapes_video(DATASETS_ROOT)
register_all_synthetic(DATASETS_ROOT)
register_all_synthetic_flow(DATASETS_ROOT)

"""Config set-up shared by train_net.py, the tools and the demo."""
import logging

import torch
from detectron2.config import get_cfg

from ..config import add_vss_config
from ..data.datasets import register_video_folders
from .config_merge import merge_config

logger = logging.getLogger(__name__)


def load_cfg(config_file, opts=()):
    """get_cfg() + add_vss_config + the YAML file + `KEY VALUE` overrides, unfrozen."""
    cfg = get_cfg()
    add_vss_config(cfg)
    merge_config(cfg, config_file, opts)
    return cfg


def prepare_cfg(cfg):
    """Make a loaded config runnable in this process.

    Registers the datasets of DATASETS.FOLDERS, and falls back to the CPU, with a warning,
    when the config asks for CUDA on a machine without it, so that the same YAML runs
    everywhere.
    """
    register_video_folders(cfg.DATASETS.FOLDERS)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("MODEL.DEVICE=%s but CUDA is not available: using the CPU", cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"


def setup_cfg(config_file, opts=(), freeze=True):
    """`load_cfg` + `prepare_cfg`, frozen unless `freeze` is False."""
    cfg = load_cfg(config_file, opts)
    prepare_cfg(cfg)
    if freeze:
        cfg.freeze()
    return cfg

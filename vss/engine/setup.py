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


# the explicit CUDA devices already warned about: tools set up many configs in one process
_warned = set()


def resolve_device(device):
    """The device MODEL.DEVICE names in this process: an explicit "cuda..." without CUDA falls back
    to the CPU with one warning per process, so that the same YAML runs everywhere (the default,
    `add_vss_config`'s, is already the best device present)."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        if device not in _warned:
            _warned.add(device)
            logger.warning("MODEL.DEVICE=%s but CUDA is not available: using the CPU", device)
        return "cpu"
    return device


def prepare_cfg(cfg):
    """Make a loaded config runnable in this process: registers the datasets of DATASETS.FOLDERS
    and resolves MODEL.DEVICE (`resolve_device`)."""
    register_video_folders(cfg.DATASETS.FOLDERS)
    cfg.MODEL.DEVICE = resolve_device(cfg.MODEL.DEVICE)


def setup_cfg(config_file, opts=(), freeze=True):
    """`load_cfg` + `prepare_cfg`, frozen unless `freeze` is False."""
    cfg = load_cfg(config_file, opts)
    prepare_cfg(cfg)
    if freeze:
        cfg.freeze()
    return cfg

"""Config set-up shared by train_net.py, the tools and the demo."""
import logging

import torch
from detectron2.config import get_cfg

from ..config import add_vss_config
from .config_merge import merge_config

logger = logging.getLogger(__name__)


def setup_cfg(config_file, opts=(), freeze=True):
    """get_cfg() + add_vss_config + the YAML file + `KEY VALUE` overrides.

    A config asking for CUDA on a machine without it falls back to the CPU, with a
    warning, so that the same YAML runs everywhere.
    """
    cfg = get_cfg()
    add_vss_config(cfg)
    merge_config(cfg, config_file, opts)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("MODEL.DEVICE=%s but CUDA is not available: using the CPU", cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"
    if freeze:
        cfg.freeze()
    return cfg

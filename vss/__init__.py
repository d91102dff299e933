"""vss: efficient video semantic segmentation on detectron2 (MPVSS, TV3S, Mask2Former).

Importing the package registers its datasets, models and evaluators.
"""
import warnings

# fvcore and detectron2 apply torch.jit.script at import time, which torch 2.x deprecates with a
# FutureWarning; nothing here scripts anything. Set before they are imported below, so that every
# entry point that imports vss first is quiet.
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)

from . import data, evaluation, modeling  # noqa: E402,F401  (registration side effects)
from .config import add_vss_config  # noqa: E402

__all__ = ["add_vss_config"]

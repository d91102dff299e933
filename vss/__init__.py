"""vss: efficient video semantic segmentation on detectron2 (MPVSS, TV3S, Mask2Former).

Importing the package registers its datasets, models and evaluators.
"""
import logging
import warnings

# fvcore and detectron2 apply torch.jit.script at import time, which torch 2.x deprecates with a
# FutureWarning; nothing here scripts anything. Set before they are imported below, so that every
# entry point that imports vss first is quiet.
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
# detectron2's environment report (default_setup) imports torch.utils.cpp_extension, which warns
# "No CUDA runtime is found" on any machine with a CUDA toolkit but no GPU: nothing to act on.
logging.getLogger("torch.utils.cpp_extension").addFilter(
    lambda record: not record.getMessage().startswith("No CUDA runtime is found"))

from . import data, evaluation, modeling  # noqa: E402,F401  (registration side effects)
from .config import add_vss_config  # noqa: E402

__all__ = ["add_vss_config"]

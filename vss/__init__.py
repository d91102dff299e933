"""vss: efficient video semantic segmentation on detectron2 (MPVSS, TV3S, Mask2Former).

Importing the package registers its datasets, models and evaluators.
"""
from . import data, evaluation, modeling  # noqa: F401  (registration side effects)
from .config import add_vss_config

__all__ = ["add_vss_config"]

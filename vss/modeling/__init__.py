"""Models. Importing registers the backbones, heads and meta-architectures with detectron2."""
from . import backbone, mask2former  # noqa: F401  (registration side effects)

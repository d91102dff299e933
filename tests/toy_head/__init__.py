"""A toy temporal head, kept outside the package: registering it is importing it."""
from .head import ReusedLogits

__all__ = ["ReusedLogits"]

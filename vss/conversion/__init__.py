"""Converters of released checkpoints to this project's key layout (the tools/convert_*.py commands)."""

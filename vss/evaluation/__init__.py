from .vss_evaluator import VSSEvaluator

__all__ = ["VSSEvaluator"]

from .compute import measuring
from .flow_evaluator import FlowEvaluator
from .vss_evaluator import VSSEvaluator

__all__ = ["FlowEvaluator", "VSSEvaluator", "measuring"]

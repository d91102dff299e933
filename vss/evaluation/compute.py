"""The compute a model spent on an evaluation: how many frames of each kind it ran, and their cost.

Video models spend differently on different frames (MPVSS: key and propagated frames; an
adaptive key-frame policy decides per video), so a run's cost is known only from the frames it
actually ran. Trainer.test evaluates inside `measuring(model)`; VSSEvaluator then counts the kind
of every frame the model ran (its temporal head's `frame_kind`, FRAME for a per-frame model)
and, once per evaluation, traces one frame of each kind with fvcore at the test set's most common
frame size (vss.utils.flops.count_frames). `report` turns counts and traced costs into the results:
the GFLOPs per frame this run spent, so that any two runs compare at equal cost. A kind fvcore
cannot trace (a custom kernel, an op it does not know) leaves GFLOPs/frame out, with one warning;
the counts stay.
"""
import contextlib
import contextvars
import logging
import weakref

from torch.nn.parallel import DistributedDataParallel

from ..modeling.frame_plan import FRAME
from ..utils.flops import frame_plan, kind_flops, mean_cost

logger = logging.getLogger(__name__)

_model = contextvars.ContextVar("vss_measured_model", default=None)
# {model: {(plan summary, sizes): {kind: GFLOPs}}}: a count depends on the model's architecture and
# the frame size, not on its weights, so the evaluations during training trace once
_traced = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def measuring(model):
    """Within: VSSEvaluator reports the compute `model` spends on the evaluation (None: nothing)."""
    token = _model.set(model.module if isinstance(model, DistributedDataParallel) else model)
    try:
        yield
    finally:
        _model.reset(token)


def measured_model():
    """The model given to `measuring` when its frames can be counted by kind, else None."""
    model = _model.get()
    temporal = getattr(model, "temporal", None)
    if temporal is not None and not (hasattr(temporal, "frame_kind") and hasattr(temporal, "frame_plan")):
        return None  # a head that declares no kinds of frames (see TEMPORAL_HEAD_REGISTRY)
    return model


def frame_kinds(model, inputs):
    """The kind of each frame of `inputs`, which `model`'s latest call ran."""
    if getattr(model, "temporal", None) is None:
        return [FRAME] * len(inputs)
    kinds = model.frame_kinds
    if kinds is None or len(kinds) != len(inputs):
        raise ValueError(f"the model's latest call ran {0 if kinds is None else len(kinds)} frames, not the "
                         f"{len(inputs)} being evaluated ({inputs[0].get('file_name', '?')}, ...): process() must "
                         "follow the model's call on the same inputs, as in inference_on_dataset")
    return kinds


def report(model, kinds, sizes):
    """Results entries of the compute `model` spent on frames of `kinds` {kind: count} and `sizes`
    {(input height, input width, output height, output width): count}, and a sentence for the log.

    Entries: "GFLOPs/frame" (fvcore's count of one frame of each kind, at the most common size,
    weighted by `kinds`; left out when a kind could not be traced), "key_frame_share"
    (models with key frames) and "frames (<kind>)" for every kind of the model's frame plan.
    """
    plan = frame_plan(model)
    known = set(plan.frames_of_each_kind())
    if set(kinds) - known:
        raise ValueError(f"the model ran frames of kinds {sorted(set(kinds) - known)} that its frame plan does not "
                         f"list ({sorted(known)}): its temporal head's frame_kind and frame_plan disagree")
    (height, width, out_height, out_width), at_size = max(sizes.items(), key=lambda item: item[1])
    traced = _traced.setdefault(model, {})
    key = (plan.summary, height, width, out_height, out_width)
    if key not in traced:
        traced[key] = _traced_costs(model, height, width, (out_height, out_width))
    costs = traced[key]
    frames = sum(kinds.values())
    results = {}
    if known <= set(costs):
        results["GFLOPs/frame"] = mean_cost(costs, kinds)
    if plan.key is not None:
        results["key_frame_share"] = kinds[plan.key] / frames
    results.update({f"frames ({kind})": float(kinds[kind]) for kind in sorted(known)})
    share = "" if plan.key is None else f", key-frame share {results['key_frame_share']:.3f}"
    if "GFLOPs/frame" not in results:
        counts = ", ".join(f"{kinds[kind]} {kind}" for kind in sorted(known))
        return results, f"{frames} frames ({counts}{share}): GFLOPs/frame unknown (a kind could not be traced)"
    spent = ", ".join(f"{kinds[kind]} {kind} at {costs[kind]:.3f}" for kind in sorted(known))
    sentence = (f"{frames} frames ({spent} GFLOPs each{share}): {results['GFLOPs/frame']:.3f} GFLOPs/frame "
                f"(fvcore, one frame of each kind traced at {height}x{width}, predictions {out_height}x{out_width}: "
                f"the size of {100 * at_size / frames:.0f}% of the frames)")
    return results, sentence


def _traced_costs(model, height, width, output_size):
    """{kind: GFLOPs} of one frame of each kind of the model's frame plan that fvcore traces; a kind whose trace
    fails is left out with one warning (after a whole evaluation, its results matter more)."""
    def skip(kind, e):
        logger.warning("cannot count the FLOPs of a %s of %s with fvcore (%s: %s): the results leave "
                       "GFLOPs/frame out", kind, type(model).__name__, type(e).__name__, e)

    flops = kind_flops(model, height, width, output_size=output_size, on_error=skip)
    return {kind: counts[""] / 1e9 for kind, counts in flops.items()}

"""What a video model's temporal state adds: the same weights evaluated with it and without it.

A temporal head that carries a state across a video's frames declares how the same weights
predict every frame as a video of its own (the TV3S paper's single-frame protocol), as config
options, found through the registries from the config without building the model (see
vss.engine.weights.declaring_class):

- `single_frame_opts`: (KEY, VALUE, ...) config options of that variant;
- `no_single_frame` (optional, heads without it): why there is none and what measures the
  head's use of time instead.

The difference of the two evaluations is the temporal contribution (`train_net.py --eval-only
--temporal-contribution`, the synthetic benchmark, the quickstart).
"""
import logging

from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.utils import comm
from tabulate import tabulate

from ..evaluation.vss_evaluator import CONTEXT_METRICS
from ..modeling import TEMPORAL_HEAD_REGISTRY, VideoSegmentor
from .runs import metric_names
from .trainer import Trainer
from .weights import declaring_class

__all__ = ["RESET", "CONTRIBUTION", "single_frame_opts", "temporal_contribution"]

logger = logging.getLogger(__name__)

# the results' keys beside the model's own ("sem_seg")
RESET, CONTRIBUTION = "reset per frame", "temporal contribution"


def single_frame_opts(cfg):
    """The config options under which `cfg`'s model predicts every frame with its state reset, as a
    list; a ValueError naming the models that have them for any other model."""
    declaring = declaring_class(cfg)
    opts = getattr(declaring, "single_frame_opts", None)
    if opts is None:
        heads = ", ".join(f"{name} (with {_words(head.single_frame_opts)})"
                          for name, head in TEMPORAL_HEAD_REGISTRY if getattr(head, "single_frame_opts", None))
        if issubclass(META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE), VideoSegmentor):
            model = f"its temporal head {cfg.MODEL.VIDEO.TEMPORAL_HEAD} has none"
            why = getattr(declaring, "no_single_frame", None)
            model += f" ({why})" if why else ""
        else:
            model = f"this config builds {cfg.MODEL.META_ARCHITECTURE}, which has no temporal state"
        raise ValueError(f"the temporal contribution compares a video model with the same weights with its state "
                         f"reset at every frame; it applies to MODEL.VIDEO.TEMPORAL_HEAD {heads}; {model}")
    if _with(cfg, opts) == cfg:
        raise ValueError(f"the config already resets the model's state at every frame ({_words(opts)}): "
                         "evaluate it as configured to compare")
    return list(opts)


def _with(cfg, opts):
    """A frozen copy of `cfg` with the config options `opts`."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.merge_from_list(list(opts))
    cfg.freeze()
    return cfg


def _words(opts):
    return " ".join(map(str, opts))


def temporal_contribution(cfg, model):
    """Trainer.test of `model` as `cfg` configures it, then of the same weights with the state reset
    at every frame (`single_frame_opts`), and a logged table of both and their difference.

    Returns Trainer.test's results of the model with, per test set, RESET: the variant's metrics
    and CONTRIBUTION: {metric: model's minus variant's} for the `metric_names(cfg)` (and the context
    pixels' metrics on data that has them).
    """
    opts = single_frame_opts(cfg)
    variant_cfg = _with(cfg, opts)
    variant = Trainer.build_model(variant_cfg)
    variant.load_state_dict(model.state_dict())
    results, reset = Trainer.test(cfg, model), Trainer.test(variant_cfg, variant)
    if not comm.is_main_process():  # the results are the main process's
        return results
    single = len(cfg.DATASETS.TEST) == 1  # detectron2 returns the one dataset's results directly
    per_set = {cfg.DATASETS.TEST[0]: results} if single else results
    reset = {cfg.DATASETS.TEST[0]: reset} if single else reset
    for dataset, result in per_set.items():
        ours, theirs = result["sem_seg"], reset[dataset]["sem_seg"]
        metrics = [m for m in (*metric_names(cfg), *CONTEXT_METRICS) if m in ours]
        result[RESET] = theirs
        result[CONTRIBUTION] = {m: ours[m] - theirs[m] for m in metrics}
        rows = [["as configured", *[ours[m] for m in metrics]],
                [f"{RESET} ({_words(opts)})", *[theirs[m] for m in metrics]],
                ["difference", *[result[CONTRIBUTION][m] for m in metrics]]]
        logger.info("Temporal contribution on %s (the same weights with the state carried and reset at every "
                    "frame):\n%s", dataset, tabulate(rows, headers=["", *metrics], floatfmt=".2f", tablefmt="pipe"))
    return per_set[cfg.DATASETS.TEST[0]] if single else per_set

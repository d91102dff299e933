"""MODEL.WEIGHTS and MODEL.MOTION.WEIGHTS into a built model: the one rule of every entry point.

train_net.py (training and --eval-only), the Trainer, VideoPredictor (so the demo), and
vss.engine.runs all load through `load_weights`, so one config and one checkpoint give one model
wherever they are used; a training run's saved OUTPUT_DIR/config.yaml with MODEL.WEIGHTS
OUTPUT_DIR/model_final.pth gives the trained model.

MODEL.WEIGHTS is read by VSSCheckpointer (strict, .pkl without running code). MODEL.MOTION.WEIGHTS
initialises a flow module that nothing else gives weights:

- at a training start (not a resumed run) whose MODEL.WEIGHTS holds no tensor of the flow module
  (a per-frame checkpoint, or none): loaded after MODEL.WEIGHTS;
- in an evaluation without MODEL.WEIGHTS of a model that is its flow module alone (FlowNetS
  pretraining evaluates its result this way);
- otherwise not applied, with an info line: a resumed run, or a checkpoint holding the flow module,
  already has the weights it was trained to (a saved config keeps the key). An evaluation without
  MODEL.WEIGHTS of any other model is an error, as the rest of it would stay random.
"""
import logging

from ..modeling.mpvss.motion_weights import find_flow_module, load_motion_weights
from .checkpoint import VSSCheckpointer

__all__ = ["build_checkpointer", "load_weights"]

logger = logging.getLogger(__name__)


def build_checkpointer(model, cfg, *, training, **kwargs):
    """The VSSCheckpointer of `model` with the config's loading options; kwargs as VSSCheckpointer's."""
    return VSSCheckpointer(model, cfg.OUTPUT_DIR, for_training=training, allow_partial=cfg.MODEL.WEIGHTS_ALLOW_PARTIAL,
                           trusted=cfg.MODEL.WEIGHTS_TRUSTED, **kwargs)


def load_weights(model, cfg, *, training, resume=False, checkpointer=None):
    """Load the weights `cfg` names into `model` by the rule of the module doc.

    Args:
        training: a training start (MODEL.WEIGHTS may lack what the model declares new) rather
            than an evaluation or inference (every weight must load).
        resume: read OUTPUT_DIR's last checkpoint instead, when there is one (detectron2's rule).
        checkpointer: the checkpointer to load with (the Trainer's, which restores its state too);
            by default one from `build_checkpointer`.

    Returns:
        what Checkpointer.load returns: the checkpoint's entries besides the model.
    """
    checkpointer = checkpointer or build_checkpointer(model, cfg, training=training)
    resumed = resume and checkpointer.has_checkpoint()
    extra = checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=resume)
    motion = cfg.MODEL.MOTION.WEIGHTS
    if not motion:
        return extra
    found = find_flow_module(model)
    flow = _state_keys(model, f"{found[0]}.") if found else []
    held = checkpointer.missing_keys is not None and any(k not in checkpointer.missing_keys for k in flow)
    if training and not resumed and not held:
        load_motion_weights(model, motion)
    elif not training and not resumed and not cfg.MODEL.WEIGHTS:
        if not flow or len(flow) < len(_state_keys(model, "")):
            raise ValueError(f"MODEL.WEIGHTS is empty and MODEL.MOTION.WEIGHTS {motion} holds only a flow module: "
                             f"the rest of {type(_unwrapped(model)).__name__} would stay random. Pass MODEL.WEIGHTS "
                             "with the trained model (MODEL.MOTION.WEIGHTS initialises training only)")
        load_motion_weights(model, motion)
    else:
        reason = ("the resumed run has its own" if resumed else f"MODEL.WEIGHTS {cfg.MODEL.WEIGHTS} holds it" if held
                  else "an evaluation reads MODEL.WEIGHTS only")
        logger.info("MODEL.MOTION.WEIGHTS %s not applied to the flow module: %s (motion weights initialise a "
                    "training start)", motion, reason)
    return extra


def _unwrapped(model):
    return getattr(model, "module", model)  # DistributedDataParallel


def _state_keys(model, prefix):
    return [k for k in _unwrapped(model).state_dict() if k.startswith(prefix)]

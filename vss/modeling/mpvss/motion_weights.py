"""Pretrained motion weights (FlowNetS) into a model's flow module: MODEL.MOTION.WEIGHTS.

The paper starts MPVSS from two checkpoints: a per-frame Mask2Former and a FlowNetS
motion encoder. MODEL.WEIGHTS gives the first (detectron2's checkpointer); this step,
run after it and logged on its own, gives the second:

- source tensors: those under `temporal.flow.` (tools/convert_flownets.py, an MPVSS
  checkpoint of this project), `flow.` (a FlowNetS pretraining run, flownets.py)
  or `motion.` (an MPVSS checkpoint of the official release);
- target: the model's one FlowEstimator (`temporal.flow` of MPVSS, `flow` of FlowNetS);
- a tensor loads where name and shape agree. The whole encoder must load (anything else
  means MODEL.MOTION.ENCODER_* differ from the checkpoint's); the decoder loads where
  FlowNetS's shapes agree (all of it for the "pixel" variant, the finest levels of the
  coarse-to-fine decoder for the query variants) and the rest keeps its initialisation;
- one log line says what loaded, what kept its initialisation and what was unused.
"""
import logging

import torch
from torch.nn.parallel import DistributedDataParallel

from .flow import FlowEstimator

__all__ = ["SOURCE_PREFIXES", "find_flow_module", "load_motion_weights", "motion_state_dict"]

logger = logging.getLogger(__name__)

SOURCE_PREFIXES = ("temporal.flow.", "flow.", "motion.")


def find_flow_module(model):
    """(name, module) of the model's one FlowEstimator, or None if it has none."""
    if isinstance(model, DistributedDataParallel):
        model = model.module
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, FlowEstimator)]
    if len(found) > 1:
        raise ValueError(f"the model has {len(found)} flow modules ({[n for n, _ in found]}); "
                         "MODEL.MOTION.WEIGHTS loads into one")
    return found[0] if found else None


def motion_state_dict(checkpoint, source="the checkpoint"):
    """Flow-module tensors of a checkpoint ({"model": state} or a state dict), keys relative to the module."""
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{source} is not a checkpoint: expected a dict of tensors or {{'model': ...}}")
    for prefix in SOURCE_PREFIXES:
        found = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and torch.is_tensor(v)}
        if found:
            return found
    raise ValueError(f"{source} has no flow-module tensors: expected keys starting with one of "
                     f"{SOURCE_PREFIXES} (e.g. temporal.flow.encoder.conv1.0.conv.weight); it has "
                     f"{sorted(state)[:5]}...")


def load_motion_weights(model, path):
    """Load the flow tensors of checkpoint `path` into `model`'s flow module (see module doc).

    Returns {"loaded": [...], "kept": [...], "unused": [...]} (names relative to the flow
    module), or None when `path` is "". Errors: no flow module ("copy" propagation), or an
    encoder tensor that is missing or shaped differently.
    """
    if not path:
        return None
    found = find_flow_module(model)
    if found is None:
        raise ValueError(f"MODEL.MOTION.WEIGHTS is {path} but the model has no flow module "
                         "(MODEL.MPVSS.PROPAGATION 'copy' builds none): unset MODEL.MOTION.WEIGHTS")
    name, flow = found
    source = motion_state_dict(torch.load(path, map_location="cpu", weights_only=True), path)
    target = flow.state_dict()
    loaded = [k for k, v in target.items() if k in source and source[k].shape == v.shape]
    kept = [k for k in target if k not in loaded]
    bad_encoder = [k for k in kept if k.startswith("encoder.")]
    if bad_encoder:
        detail = [f"{k}: model {tuple(target[k].shape)}, checkpoint "
                  f"{tuple(source[k].shape) if k in source else 'missing'}" for k in bad_encoder[:3]]
        raise ValueError(f"MODEL.MOTION.WEIGHTS {path}: the motion encoder does not match ({'; '.join(detail)}); "
                         "MODEL.MOTION.ENCODER_* must be those the weights were trained with")
    with torch.no_grad():
        for k in loaded:
            target[k].copy_(source[k])
    unused = sorted(set(source) - set(target))
    logger.info(
        "Motion weights from %s into %s: loaded %d of %d tensors (encoder %d, decoder %d: %s); "
        "kept their initialisation: %s (shape differs), %s (not in the checkpoint); unused in the checkpoint: %s",
        path, name, len(loaded), len(target), sum(k.startswith("encoder.") for k in loaded),
        sum(k.startswith("decoder.") for k in loaded),
        _names(k for k in loaded if k.startswith("decoder.")) or "none",
        _names(k for k in kept if k in source) or "none", _names(k for k in kept if k not in source) or "none",
        _names(unused) or "none")
    return {"loaded": loaded, "kept": kept, "unused": unused}


def _names(keys):
    """Parameter names grouped by module (`decoder.deconv2.conv.weight` -> `decoder.deconv2`)."""
    modules = []
    for k in keys:
        module = k.split(".")[0] if not k.startswith(("encoder.", "decoder.")) else ".".join(k.split(".")[:2])
        if module not in modules:
            modules.append(module)
    return ", ".join(modules)

"""Optimizer with Mask2Former-style parameter groups and whole-model gradient clipping."""
import itertools

import torch
from detectron2.solver.build import maybe_add_gradient_clipping

# torch's norm layers; the package's own declare themselves with a true `is_norm` (RMSNorm)
NORM_TYPES = (
    torch.nn.modules.batchnorm._BatchNorm,
    torch.nn.GroupNorm,
    torch.nn.LayerNorm,
    torch.nn.modules.instancenorm._InstanceNorm,
    torch.nn.LocalResponseNorm,
)
# Parameters that act like embeddings and take SOLVER.WEIGHT_DECAY_EMBED.
EMBED_NAMES = ("relative_position_bias_table", "absolute_pos_embed", "level_embed")


def custom_key_rules(entries):
    """SOLVER.CUSTOM_KEYS -> [(key, lr_mult, decay_mult)] in mmcv's matching order: longest key
    first, keys of equal length alphabetically (mmcv 1.3 DefaultOptimizerConstructor.add_params)."""
    rules = []
    for entry in entries:
        if (not isinstance(entry, (list, tuple)) or len(entry) != 3 or not isinstance(entry[0], str)
                or not entry[0] or not all(isinstance(m, (int, float)) for m in entry[1:])):
            raise ValueError(f"SOLVER.CUSTOM_KEYS entries must be [name substring, lr_mult, decay_mult], got {entry!r}")
        rules.append((entry[0], float(entry[1]), float(entry[2])))
    keys = [key for key, _, _ in rules]
    if len(set(keys)) != len(keys):
        raise ValueError(f"SOLVER.CUSTOM_KEYS names a key twice: {keys}")
    return sorted(sorted(rules), key=lambda rule: len(rule[0]), reverse=True)


def param_groups(cfg, model):
    """One group per trainable parameter with its lr and weight decay.

    A parameter whose name contains a key of SOLVER.CUSTOM_KEYS takes BASE_LR x lr_mult and
    WEIGHT_DECAY x decay_mult of the first matching key (`custom_key_rules` order) and nothing
    else, as mmcv's custom_keys; the others follow the multiplier and norm/embedding rules.
    Frozen parameters (requires_grad False) are left out, so freezing is decided by the
    model alone.
    """
    base_lr, wd = cfg.SOLVER.BASE_LR, cfg.SOLVER.WEIGHT_DECAY
    rules = custom_key_rules(cfg.SOLVER.CUSTOM_KEYS)
    groups, seen = [], set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or param in seen:
                continue
            seen.add(param)
            full_name = f"{module_name}.{name}" if module_name else name
            rule = next((r for r in rules if r[0] in full_name), None)
            if rule is not None:
                lr, decay = base_lr * rule[1], wd * rule[2]
            else:
                lr, decay = base_lr, wd
                if module_name.startswith("backbone"):
                    lr *= cfg.SOLVER.BACKBONE_MULTIPLIER
                else:
                    lr *= cfg.SOLVER.HEAD_MULTIPLIER
                if isinstance(module, NORM_TYPES) or getattr(module, "is_norm", False):
                    decay = cfg.SOLVER.WEIGHT_DECAY_NORM
                elif isinstance(module, torch.nn.Embedding) or name in EMBED_NAMES:
                    decay = cfg.SOLVER.WEIGHT_DECAY_EMBED
            groups.append({"params": [param], "lr": lr, "weight_decay": decay})
    if not groups:
        raise ValueError("the model has no trainable parameters (all have requires_grad=False)")
    return groups


def with_full_model_clipping(optim_cls, max_norm):
    """A subclass of `optim_cls` clipping the global gradient norm before each step."""

    class FullModelClipped(optim_cls):
        def step(self, closure=None):
            params = itertools.chain(*[g["params"] for g in self.param_groups])
            torch.nn.utils.clip_grad_norm_(params, max_norm)
            return super().step(closure=closure)

    FullModelClipped.__name__ = f"{optim_cls.__name__}FullModelClipped"
    return FullModelClipped


def build_optimizer(cfg, model):
    name = cfg.SOLVER.OPTIMIZER.upper()
    if name == "SGD":
        optim_cls, kwargs = torch.optim.SGD, {"momentum": cfg.SOLVER.MOMENTUM}
    elif name == "ADAMW":
        optim_cls, kwargs = torch.optim.AdamW, {}
    else:
        raise ValueError(f"SOLVER.OPTIMIZER must be 'SGD' or 'ADAMW', got {cfg.SOLVER.OPTIMIZER!r}")
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE == "full_model":
        optim_cls = with_full_model_clipping(optim_cls, clip.CLIP_VALUE)
    else:
        optim_cls = maybe_add_gradient_clipping(cfg, optim_cls)
    return optim_cls(param_groups(cfg, model), lr=cfg.SOLVER.BASE_LR, **kwargs)

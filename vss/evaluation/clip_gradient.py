"""How much of TV3S's training signal reaches a clip's earlier frames.

TV3S trains on clips (INPUT.VIDEO.CLIP_OFFSETS, the target frame last) and, as the release,
supervises the temporal prediction of the last frame only. Its gradient reaches the earlier
frames only through the Mamba layers' carried states. For training clips drawn as the training
loader draws them (ClipMapper: the config's augmentations, clip offsets and targets), this
measures the gradient of the temporal loss with respect to each clip frame's Mamba input,
||dL/dx_t||, relative to the last frame's: 0 when nothing of the earlier frames is used.
"""
import numpy as np
import torch
from detectron2.data import DatasetCatalog
from tabulate import tabulate

from ..data.mappers import ClipMapper
from ..data.video import group_by_video
from ..modeling.tv3s.head import StateSpaceSharing

__all__ = ["clip_gradient", "gradient_table"]


def clip_gradient(cfg, model, dataset_name, clips=16, seed=0):
    """Draw `clips` training clips of `dataset_name` (targets evenly over its frames, augmentation
    draws from `seed`) and return {"clips", "offsets", "gradient share": per clip position the mean
    over clips of ||dL/dx_t|| / ||dL/dx_last||} for `model` (TV3S) in eval mode (no dropout)."""
    head = getattr(model, "temporal", None)
    if not isinstance(head, StateSpaceSharing):
        raise ValueError(f"the clip-gradient diagnostic measures TV3S (MODEL.VIDEO.TEMPORAL_HEAD StateSpaceSharing), "
                         f"got {type(model).__name__} with temporal head {type(head).__name__}")
    records = DatasetCatalog.get(dataset_name)
    if clips < 1 or not records:
        raise ValueError(f"dataset {dataset_name!r} ({len(records)} frames): need at least one clip, asked for {clips}")
    mapper = ClipMapper(cfg, is_train=True, videos=group_by_video(records))
    targets = [records[i] for i in np.linspace(0, len(records) - 1, clips).round().astype(int)]
    inputs = []

    def keep(module, args):  # the Mamba input (B, T, C, h, w), its gradient kept after backward
        args[0].retain_grad()
        inputs.append(args[0])

    handle = head.vs.register_forward_pre_hook(keep)
    was_training = model.training
    model.eval()
    shares = []
    try:
        np.random.seed(seed)
        for record in targets:
            inputs.clear()
            model.zero_grad(set_to_none=True)
            head.losses(model, [mapper(record)])["loss_sem_seg"].backward()
            norms = inputs[0].grad[0].flatten(1).norm(dim=1)  # (T,)
            shares.append((norms / norms[-1]).tolist())
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return {"clips": clips, "offsets": list(mapper.offsets),
            "gradient share": [float(np.mean(column)) for column in zip(*shares)]}


def gradient_table(results):
    """Markdown table of several results with a "clip gradient" ({name: result}): per model the
    gradient share of each clip frame, the last frame's being 1."""
    first = next(iter(results.values()))["clip gradient"]
    headers = ["model", "clips", *[f"frame t{o:+d}" if o else "frame t" for o in first["offsets"]]]
    rows = [[name, str(r["clip gradient"]["clips"]), *[f"{s:.3f}" for s in r["clip gradient"]["gradient share"]]]
            for name, r in results.items()]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)

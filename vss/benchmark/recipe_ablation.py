"""The releases' training switches that apply to the synthetic configs, and the spread of a
metric over seeds (tools/recipe_ablation.py fine-tunes the quickstart's video models once per
switch and seed).
"""
import statistics

MPVSS_SWITCHES = {
    "synthetic config (code defaults)": [],
    "frozen modules in train mode": ["MODEL.VIDEO.FROZEN_MODE", "train"],
    "per-video pair draw": ["DATALOADER.SAMPLE_BY", "video", "INPUT.VIDEO.PAIR_DRAW", "window"],
}
TV3S_SWITCHES = {
    "synthetic config (code defaults)": [],
    "per-frame colour jitter": ["INPUT.VIDEO.COLOR_AUG_PER_FRAME", True],
    "loss averaged over every pixel": ["MODEL.SEM_SEG_HEAD.LOSS_AVERAGE", "all"],
    "release clip targets, per-video draw": ["DATALOADER.SAMPLE_BY", "video", "INPUT.VIDEO.CLIP_TARGETS",
                                             "full_context"],
}


def with_all(switches):
    """The switches plus one run with all of them: the release's recipe."""
    every = [x for opts in switches.values() for x in opts]
    return {**switches, "all of the above (release)": every}


def summary(runs):
    """mean and sample standard deviation (0 for one run) of each metric over seeds."""
    out = {}
    for metric in ("mIoU", "mVC8"):
        values = [r[metric] for r in runs.values()]
        out[metric] = {"mean": statistics.mean(values),
                       "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    return out

#!/usr/bin/env python
"""How much of its carried scan state a trained TV3S uses when it streams a video, per Mamba layer
(vss/evaluation/state_carry.py): at every frame after a video's first, the carried state's weight R
left after 1/4, 1/2, 3/4 and all of a window's tokens of the frame (median, and the shares of
(window, channel, state) with R > 0.5 and R > 0.01), the share of the layer's output that
the state makes (the output from a zero state differs by that fraction), how far training
moved the decays A and the step sizes from their initialisation, and how much of the temporal
loss's gradient reaches each frame of a training clip (vss/evaluation/clip_gradient.py).

    .venv/bin/python tools/tv3s_state_carry.py --config-file configs/synthetic/tv3s_finetune.yaml \\
        --videos 2 --json output/state_carry.json MODEL.WEIGHTS output/synthetic/tv3s_finetune/model_final.pth

Data folders not registered by name go in with DATASETS.FOLDERS (see README, "Datasets").
"""
import argparse
import json
import os
import sys

import vss  # noqa: F401  (first: its warnings filter quiets fvcore's torch.jit deprecation)

from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

from vss.engine import setup_cfg
from vss.engine.cli import add_debug_argument, run_main
from vss.engine.runs import load_model
from vss.engine.weights import declaring_class
from vss.evaluation.clip_gradient import clip_gradient
from vss.evaluation.state_carry import markdown, state_carry
from vss.modeling.tv3s.head import StateSpaceSharing


def check_tv3s(cfg):
    """A ValueError naming what `cfg` builds unless it is TV3S."""
    declaring = declaring_class(cfg)
    if not issubclass(declaring, StateSpaceSharing):
        what = cfg.MODEL.META_ARCHITECTURE
        if declaring.__name__ != what:
            what += f" with temporal head {cfg.MODEL.VIDEO.TEMPORAL_HEAD}"
        raise ValueError(f"the config builds {what}; the state-carry diagnostic measures TV3S "
                         "(MODEL.META_ARCHITECTURE VideoSegmentor, MODEL.VIDEO.TEMPORAL_HEAD StateSpaceSharing)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--dataset", help="a registered dataset (default the config's DATASETS.TEST[0])")
    parser.add_argument("--videos", type=int, metavar="N", help="measure the dataset's first N videos (default all)")
    parser.add_argument("--clips", type=int, default=16, metavar="N",
                        help="training clips drawn from the videos (as ClipMapper draws them) to measure how much "
                             "of the temporal loss's gradient reaches each clip frame (default 16; 0: not measured)")
    parser.add_argument("--json", metavar="FILE", help="also write the numbers to this JSON file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ... (e.g. MODEL.WEIGHTS)")
    add_debug_argument(parser)
    args = parser.parse_args(argv)
    setup_logger(name="vss")
    cfg = setup_cfg(args.config_file, args.opts)
    check_tv3s(cfg)
    dataset = args.dataset or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else None)
    if dataset is None:
        raise ValueError("the config has no DATASETS.TEST: name the videos with --dataset")
    # as train_net's default_setup: parts the weights do not cover start from SEED's draw
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED)
    cfg, model = load_model(args.config_file, cfg.MODEL.WEIGHTS, args.opts)
    result = {"config": args.config_file, "opts": args.opts, "weights": cfg.MODEL.WEIGHTS, "dataset": dataset,
              **state_carry(cfg, model, dataset, args.videos)}
    if args.clips:
        result["clip gradient"] = clip_gradient(cfg, model, dataset, args.clips)
    print(markdown(result))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"[tv3s_state_carry] {args.json}")
    return result


if __name__ == "__main__":
    run_main(main, "tv3s_state_carry.py", debug="--debug" in sys.argv[1:])

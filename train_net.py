#!/usr/bin/env python
"""Train or evaluate a vss model (per-frame Mask2Former, MPVSS, TV3S).

Everything vss logs (dataset summaries, warnings, the per-class IoU table) goes to the
console and to OUTPUT_DIR/log.txt with detectron2's own lines.
"""
import os

import vss  # noqa: F401  (first: its warnings filter quiets fvcore's torch.jit deprecation)

from detectron2.engine import default_argument_parser, default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from vss.engine import (Trainer, check_weights, launch, load_cfg, load_weights, prepare_cfg, single_frame_opts,
                        temporal_contribution)
from vss.engine.cli import add_debug_argument, run_main

DESCRIPTION = """\
Train a vss model (per-frame Mask2Former, SegFormer, MPVSS, TV3S, FlowNetS pretraining) from a
config file, or evaluate trained weights with --eval-only. Config keys are overridden by KEY VALUE
pairs after the options. Checkpoints, config.yaml and log.txt go to OUTPUT_DIR."""

EPILOG = """\
examples:
  .venv/bin/python train_net.py --config-file configs/synthetic/mask2former_tiny.yaml
  .venv/bin/python train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS path/to/model.pth
  .venv/bin/python train_net.py --config-file CONFIG --eval-only --temporal-contribution MODEL.WEIGHTS path/to/model.pth
  .venv/bin/python train_net.py --config-file CONFIG --resume
  .venv/bin/python train_net.py --config-file CONFIG --num-gpus 8   # DDP, one process per GPU
  .venv/bin/python train_net.py --config-file CONFIG --num-gpus 2 MODEL.DEVICE cpu   # 2 CPU processes (gloo)

MODEL.DEVICE is CUDA where present, else the CPU. An error in the input (a missing file, weights
that do not fit) ends with one line and exit status 2; --debug shows its traceback."""


def build_parser():
    parser = add_debug_argument(default_argument_parser(epilog=EPILOG))
    parser.description = DESCRIPTION
    parser.add_argument("--temporal-contribution", action="store_true",
                        help="with --eval-only: evaluate the video model as configured, then the same weights with "
                             "its state reset at every frame (TV3S), and log both and their difference")
    return parser


def setup(args):
    cfg = load_cfg(args.config_file, args.opts)
    # Before anything else of vss logs, so that warnings about the config reach log.txt too.
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="vss")
    prepare_cfg(cfg)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.temporal_contribution:  # before any work: a model without the variant fails here
        if not args.eval_only:
            raise ValueError("--temporal-contribution evaluates trained weights: use it with --eval-only")
        single_frame_opts(cfg)
    # A resumed run reads its own last checkpoint, not MODEL.WEIGHTS.
    if not (args.resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))):
        check_weights(cfg, args.config_file, training=not args.eval_only)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        load_weights(model, cfg, training=False, resume=args.resume)
        return (temporal_contribution if args.temporal_contribution else Trainer.test)(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def run(args):
    return launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
        # --num-gpus N on the CPU starts N gloo processes (no CUDA, or MODEL.DEVICE cpu).
        device=load_cfg(args.config_file, args.opts).MODEL.DEVICE,
    )


if __name__ == "__main__":
    parser = build_parser()
    args = parser.parse_args()
    if not args.config_file:
        parser.error("--config-file is required: the config of the model to train or evaluate (see --help)")
    if not os.path.isfile(args.config_file):
        parser.error(f"config file {args.config_file} does not exist")
    run_main(lambda: run(args), "train_net.py", debug=args.debug)

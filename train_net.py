#!/usr/bin/env python
"""Train or evaluate a vss model (per-frame Mask2Former, MPVSS, TV3S).

    .venv/bin/python train_net.py --config-file configs/synthetic/mask2former_tiny.yaml
    .venv/bin/python train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth
    .venv/bin/python train_net.py --config-file ... --num-gpus 8   # DDP through detectron2's launch
    .venv/bin/python train_net.py --config-file ... --num-gpus 2 MODEL.DEVICE cpu   # 2 CPU processes (gloo)

Everything vss logs (dataset summaries, warnings, the per-class IoU table) goes to the
console and to OUTPUT_DIR/log.txt with detectron2's own lines.
"""
import os
import warnings

# fvcore and detectron2 apply torch.jit.script at import time, which torch 2.x deprecates
# with a FutureWarning on every command; nothing here scripts anything.
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)

from detectron2.engine import default_argument_parser, default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from vss.engine import Trainer, VSSCheckpointer, check_weights, launch, load_cfg, prepare_cfg
from vss.modeling.mpvss.motion_weights import load_motion_weights


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
    # A resumed run reads its own last checkpoint, not MODEL.WEIGHTS.
    if not (args.resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))):
        check_weights(cfg, args.config_file, training=not args.eval_only)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        VSSCheckpointer(model, save_dir=cfg.OUTPUT_DIR, allow_partial=cfg.MODEL.WEIGHTS_ALLOW_PARTIAL).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        load_motion_weights(model, cfg.MODEL.MOTION.WEIGHTS)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
        # --num-gpus N on the CPU starts N gloo processes (no CUDA, or MODEL.DEVICE cpu).
        device=load_cfg(args.config_file, args.opts).MODEL.DEVICE,
    )

#!/usr/bin/env python
"""Train or evaluate a vss model (per-frame Mask2Former, MPVSS, TV3S).

    python train_net.py --config-file configs/synthetic/mask2former_tiny.yaml
    python train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth
    python train_net.py --config-file ... --num-gpus 8   # DDP through detectron2's launch
    python train_net.py --config-file ... --num-gpus 2 MODEL.DEVICE cpu   # 2 CPU processes (gloo)
"""
from detectron2.engine import default_argument_parser, default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from vss.engine import Trainer, VSSCheckpointer, launch, setup_cfg
from vss.modeling.mpvss.motion_weights import load_motion_weights


def setup(args):
    cfg = setup_cfg(args.config_file, args.opts)
    default_setup(cfg, args)
    # vss's own messages (e.g. the resumed schedule) go to the console and OUTPUT_DIR/log.txt too
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="vss")
    return cfg


def main(args):
    cfg = setup(args)
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
        device=setup_cfg(args.config_file, args.opts).MODEL.DEVICE,
    )

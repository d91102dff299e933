"""Generate the synthetic video dataset (registered as synthetic_vss_{train,val}, with video effects
as synthetic_vss_fx_{train,val}, the preset calibrated to VSPW as synthetic_vss_vspw_{train,val}
and the context task as synthetic_vss_ctx_{train,val}).

    .venv/bin/python datasets/prepare_synthetic.py                      # ./datasets/synthetic_vss, seconds
    .venv/bin/python datasets/prepare_synthetic.py --effects vspw       # ./datasets/synthetic_vss_vspw
    .venv/bin/python datasets/prepare_synthetic.py --effects effects    # ./datasets/synthetic_vss_fx
    .venv/bin/python datasets/prepare_synthetic.py --context 3          # ./datasets/synthetic_vss_ctx
    .venv/bin/python datasets/prepare_synthetic.py --frames 40 --height 240 --width 320 --overwrite
    .venv/bin/python datasets/prepare_synthetic.py --effects effects --motion-blur 0 --noise 20 --root /tmp/noisy

The default root is `$DETECTRON2_DATASETS/synthetic_vss` for the clean set,
`$DETECTRON2_DATASETS/synthetic_vss_vspw` for the vspw preset as it is,
`$DETECTRON2_DATASETS/synthetic_vss_fx` for any other set with effects and
`$DETECTRON2_DATASETS/synthetic_vss_ctx` for the context task, where the registered datasets look.
The context task (--context P) makes every object a disc of one size and motion for all classes
that shows its class colour in one frame of every P, a look shared by all classes in the others;
context/<frame>.png marks the pixels whose class only an earlier frame showed (vss/data/synthetic.py).
Rerunning with the same options does nothing; other options need --overwrite.
Effect strengths start from the preset and each option given replaces one (see
vss/data/video_effects.py for what each does).
"""
import argparse
import os
import sys

from vss.data.synthetic import generate
from vss.data.video_effects import CLEAN, PRESETS, resolve_effects
from vss.engine.cli import add_debug_argument, run_main

# Option name, type and help of each effect strength.
EFFECT_OPTIONS = {
    "speed": (float, "factor on every motion"),
    "turns": (float, "varied motion: sudden turns and speed changes, camera shake (pixels at 120 px)"),
    "motion_blur": (float, "longest exposure as a fraction of the frame interval, 0..1"),
    "occlusions": (float, "occluder passes (pillars, near persons) per 20 frames"),
    "flicker": (float, "illumination change per frame, relative"),
    "noise": (float, "largest extra sensor noise standard deviation, 0..255 units"),
    "jpeg_quality": (int, "lowest JPEG quality drawn (92 = no extra compression)"),
    "object_size": (float, "factor on the moving objects' sizes"),
    "flap": (float, "factor on the rate of the birds' wing beats and wobble"),
    "haze": (float, "strongest veil over patches of a frame, drawn anew each frame, 0..1"),
}


def default_set(effects, context):
    """The registered set whose folder (its name) is the default root: the context task's for any
    context task, the calibrated set's for the vspw preset as it is, the clean set's for no
    effects, else the effects set's (any other strengths)."""
    if context:
        return "synthetic_vss_ctx"
    if effects == resolve_effects("vspw"):
        return "synthetic_vss_vspw"
    return "synthetic_vss" if effects == CLEAN else "synthetic_vss_fx"


def main(argv=None):
    datasets = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", help="output folder (default: see above)")
    parser.add_argument("--train-videos", type=int, default=8)
    parser.add_argument("--val-videos", type=int, default=4)
    parser.add_argument("--frames", type=int, default=20, help="frames per video")
    parser.add_argument("--height", type=int, default=120)
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--effects", choices=sorted(PRESETS), default="clean",
                        help="preset of video effects (default clean)")
    for name, (kind, text) in EFFECT_OPTIONS.items():
        parser.add_argument("--" + name.replace("_", "-"), type=kind,
                            help=f"{text} (" + ", ".join(f"{p} {PRESETS[p][name]:g}" for p in PRESETS) + ")")
    parser.add_argument("--context", type=int, default=0, metavar="P",
                        help="the context task: classes shown in one frame of every P >= 2 (default 0: off)")
    parser.add_argument("--flow-files", action="store_true",
                        help="also write flow/<t>.flo (Middlebury) and flow_valid/<t>.png: the backward flow "
                             "of each frame t > 0 to frame t - 1")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing dataset generated with different options")
    add_debug_argument(parser)
    args = parser.parse_args(argv)
    try:
        effects = resolve_effects(args.effects, **{name: getattr(args, name) for name in EFFECT_OPTIONS})
        root = args.root or os.path.join(datasets, default_set(effects, args.context))
        summary = generate(root, train_videos=args.train_videos,
                           val_videos=args.val_videos, frames=args.frames, height=args.height,
                           width=args.width, seed=args.seed, effects=effects, flow_files=args.flow_files,
                           context=args.context, overwrite=args.overwrite)
    except (FileExistsError, ValueError) as e:
        sys.exit(f"prepare_synthetic: {e}")
    videos = {split: len(ids) for split, ids in summary["videos"].items()}
    if summary["generated"]:
        print(f"wrote {summary['frames']} frames ({videos['train']} train / {videos['val']} val videos) "
              f"to {summary['root']}")
    else:
        print(f"{summary['root']} is already up to date ({videos['train']} train / {videos['val']} val "
              "videos with these options); nothing to do")


if __name__ == "__main__":
    run_main(main, "prepare_synthetic.py", debug="--debug" in sys.argv[1:])

#!/usr/bin/env python
"""Accuracy (and FLOPs) against the key-frame interval K, as in MPVSS's Figure 3.

Each --runs gives one variant (one line of the plot) and its evaluation results, one per K:

    --runs "NAME=[K<k>:]PATH,[K<k>:]PATH,..."

PATH is one of
  * a detectron2 log (the log.txt that `train_net.py`, also with --eval-only, leaves in
    OUTPUT_DIR): the result is the last "copypaste:" block of the task (--task) in it;
  * a folder: its log.txt;
  * a JSON file holding what `Trainer.test` returns plus the interval,
    {"K": 5, "sem_seg": {"mIoU": 47.10, "WIoU": 76.25, ...}}  (task -> metric -> value).
K is the JSON's "K"; for a log it is MODEL.MPVSS.KEY_INTERVAL of the config.yaml that
detectron2 saves beside it. A "K<k>:" tag in front of PATH gives K where neither exists and
must agree with them where they do. Paths cannot contain commas.

A run with the adaptive key-frame policy (MODEL.MPVSS.KEY_POLICY "adaptive" in config.yaml, or
"KEY_POLICY": "adaptive" in the JSON) has key frames at most K frames apart, sooner when its
confidence drops: it is plotted at K, labelled "(adaptive, K = longest interval)". A variant
cannot mix the two policies.

With --flops KEY=<gflops>,NONKEY=<gflops> a second panel shows the mean GFLOPs per frame,
(key + (K - 1) * nonkey) / K: one key frame and K - 1 propagated frames, i.e. the mean over a
clip whose length is a multiple of K. The same values are printed as a table.

  python tools/plot_keyframe_tradeoff.py \\
      --runs copy=output/synthetic/mpvss_copy/eval_k2,output/synthetic/mpvss_copy/eval_k5 \\
      --runs "query flow=K2:out/q2/log.txt,K5:out/q5/results.json" \\
      --flops KEY=110.56,NONKEY=21.24 --flops-label "MPVSS R50, 480x853" --output tradeoff.png
"""
import argparse
import os
import sys

import vss  # noqa: F401  (first: its warnings filter quiets fvcore's torch.jit deprecation)

from vss.utils.tradeoff import ADAPTIVE_LABEL, collect, format_table, parse_flops, parse_run, plot_tradeoff
from vss.engine.cli import add_debug_argument, run_main


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", action="append", required=True, metavar="NAME=[K<k>:]PATH,...",
                        help="one variant and its evaluation outputs; repeat for more variants")
    parser.add_argument("--output", required=True, metavar="PNG")
    parser.add_argument("--metric", default="mIoU")
    parser.add_argument("--task", default="sem_seg", help="detectron2 result task holding the metric")
    parser.add_argument("--dataset", help="dataset whose result to use when a log holds several")
    parser.add_argument("--flops", metavar="KEY=G,NONKEY=G", help="GFLOPs of a key and a non-key frame")
    parser.add_argument("--flops-label", help="what the FLOPs were measured on, e.g. 'MPVSS R50, 480x853'")
    add_debug_argument(parser)
    args = parser.parse_args(argv)
    try:
        flops = parse_flops(args.flops) if args.flops else None
        series = collect([parse_run(s) for s in args.runs], args.metric, args.task, args.dataset)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(format_table(series, args.metric, flops))
    if flops and args.flops_label:
        print(f"GFLOPs: {args.flops_label}")
    if any(name.endswith(ADAPTIVE_LABEL) for name in series):
        print("adaptive key-frame policy: plotted at K = MODEL.MPVSS.KEY_INTERVAL, the longest interval; its key "
              "frames may come sooner" + (" (the GFLOPs row assumes a key frame every K)" if flops else ""))
    try:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        plot_tradeoff(series, args.output, args.metric, flops, args.flops_label)
    except OSError as e:
        sys.exit(f"error: cannot write {args.output}: {e}")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    run_main(main, "plot_keyframe_tradeoff.py", debug="--debug" in sys.argv[1:])

#!/usr/bin/env python
"""Peak memory of Mask2Former's test-time path to labels: the full score map against `labels_only()`.

For each frame size, the frame is resized as the VSPW configs resize it (short side
--min-size-test, long side at most --max-size-test, padded to --size-divisibility) and the
decoder outputs for it are random (--queries queries, --classes + 1 class logits, mask
logits at 1/4 of the padded size). The step measured is `semantic_outputs` (masks upsampled
to the padded input, combined with the class probabilities, cropped, resized to the frame)
and the argmax over classes:

- full:   the (K, height, width) score map, then its argmax (what the evaluator and the demo
          did before);
- labels: the same call inside `labels_only()` (vss.modeling.postprocess.sem_seg_labels).

Each case runs in a fresh process. Memory is the process's peak resident set size
(getrusage ru_maxrss), given as the peak and as its rise during the step over the peak
before it (interpreter, torch and the inputs). Both modes must give the same labels (checked).

  python tools/benchmark_memory.py [--classes 124] [--sizes 480x853 1080x1920 2160x3840] [--threads 1]
"""
import argparse
import hashlib
import json
import resource
import subprocess
import sys
import time

MODES = ("full", "labels")


def _size(text):
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a frame size HEIGHTxWIDTH such as 1080x1920, got {text!r}")
    if height <= 0 or width <= 0:
        raise argparse.ArgumentTypeError(f"frame size must be positive, got {text!r}")
    return height, width


def _peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_case(args):
    """One (frame size, mode) in this process; prints a JSON line."""
    import torch
    from detectron2.data.transforms import ResizeShortestEdge

    from vss.modeling.mask2former import semantic_outputs
    from vss.modeling.postprocess import labels_only, output_labels

    torch.set_num_threads(args.threads)
    height, width = args.case
    h, w = ResizeShortestEdge.get_output_shape(height, width, args.min_size_test, args.max_size_test)
    div = args.size_divisibility
    padded = (-(-h // div) * div, -(-w // div) * div)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, args.queries, args.classes + 1, generator=g)
    masks = torch.randn(1, args.queries, padded[0] // 4, padded[1] // 4, generator=g)
    before = _peak_mib()
    start = time.perf_counter()
    with torch.no_grad(), labels_only(args.mode == "labels"):
        (output,) = semantic_outputs(logits, masks, padded, [(h, w)], [(height, width)])
        labels = output_labels(output)
    seconds = time.perf_counter() - start
    after = _peak_mib()
    digest = hashlib.sha1(labels.to(torch.int64).numpy().tobytes()).hexdigest()
    print(json.dumps({"input": f"{h}x{w}", "before_mib": before, "peak_mib": after, "seconds": seconds,
                      "labels_sha1": digest}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=_size, default=[(480, 853), (1080, 1920), (2160, 3840)],
                        metavar="HxW", help="frame sizes (default: 480x853 1080x1920 2160x3840)")
    parser.add_argument("--classes", type=int, default=124, help="K (default 124, VSPW)")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--min-size-test", type=int, default=480)
    parser.add_argument("--max-size-test", type=int, default=3840)
    parser.add_argument("--size-divisibility", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--case", type=_size, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case is not None:
        return run_case(args)

    rows = []
    for height, width in args.sizes:
        results = {}
        for mode in MODES:
            command = [sys.executable, __file__, "--case", f"{height}x{width}", "--mode", mode,
                       "--classes", str(args.classes), "--queries", str(args.queries),
                       "--min-size-test", str(args.min_size_test), "--max-size-test", str(args.max_size_test),
                       "--size-divisibility", str(args.size_divisibility), "--threads", str(args.threads)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"benchmark case {height}x{width} {mode} failed:\n{done.stderr}")
            results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
        full, labels = results["full"], results["labels"]
        if full["labels_sha1"] != labels["labels_sha1"]:
            sys.exit(f"{height}x{width}: labels_only gave other labels than the full map's argmax")
        rows.append([
            f"{height}x{width}", full["input"],
            f"{full['peak_mib']:.0f} (+{full['peak_mib'] - full['before_mib']:.0f})",
            f"{labels['peak_mib']:.0f} (+{labels['peak_mib'] - labels['before_mib']:.0f})",
            f"{full['seconds']:.2f} / {labels['seconds']:.2f}",
        ])
    from tabulate import tabulate

    print(f"K = {args.classes} classes, {args.queries} queries, {args.threads} thread(s); "
          "peak RSS in MiB (rise during the step); labels equal in both modes")
    print(tabulate(rows, headers=["frame", "model input", "full map", "labels_only", "seconds full / labels"],
                   tablefmt="pipe"))


if __name__ == "__main__":
    main()

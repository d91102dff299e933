#!/usr/bin/env python
"""Segment a video with a vss model and write an overlay video and/or per-frame PNGs.

The input is one video: a video file, a folder of frames (image files in natural name
order: frame2 before frame10) or a quoted glob pattern (files in the same order). Its
frames go through VideoPredictor in order, so video models carry their state from frame
to frame (MPVSS key frames, TV3S scan states) as in the evaluation.

Outputs (at least one):
  --output-video OUT.mp4  the overlays as an mp4v video (fps: --fps, else the input
                          video's, else 15);
  --output-dir DIR        DIR/labels/<video>/<stem>.png, the predicted 0-based train ids
                          as a uint8 PNG, whatever the dataset's label_offset: the values
                          and layout TEST.VSS.SAVE_PREDICTIONS writes (DIR/labels is a
                          result root for VSPW's official scripts), and
                          DIR/overlay/<video>/<stem>.png, the colour overlay with class
                          names (detectron2's Visualizer).
                          <video> is a video file's name without extension, else the frames'
                          folder (the one above it for VSPW's data/<video>/origin); <stem> is
                          the frame file's name without extension, or the 6-digit frame index
                          for a video file.

Class names and colours come from the metadata of DATASETS.TEST[0].
Config overrides follow --opts as KEY VALUE pairs, up to the next option.

  .venv/bin/python demo/demo.py --config-file configs/synthetic/mask2former_tiny.yaml \\
      --input "datasets/synthetic_vss/data/val_0000/origin/*.jpg" --output-video out.mp4 \\
      --opts MODEL.WEIGHTS output/quickstart/mask2former/model_final.pth
"""
import argparse
import glob
import itertools
import os
import sys
import time

import vss  # noqa: F401  (first: its warnings filter quiets fvcore's torch.jit deprecation)

import cv2
import numpy as np
import tqdm
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import Visualizer

from vss.data.frames import natural_key
from vss.data.io import IGNORE_LABEL, read_frame
from vss.engine import VideoPredictor, check_weights, setup_cfg
from vss.engine.cli import add_debug_argument, run_main
from vss.modeling.postprocess import output_labels

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_FPS = 15.0


class DemoError(ValueError):
    """A problem with the demo's input, output or dataset metadata: a user error (vss.engine.cli)."""


def frame_files(spec):
    """The frame files of a folder or glob pattern in natural order; a list of one for an image file."""
    if os.path.isdir(spec):
        paths = [os.path.join(spec, n) for n in os.listdir(spec) if n.lower().endswith(IMAGE_EXTENSIONS)]
        if not paths:
            raise DemoError(f"input folder {spec} has no image files ({', '.join(IMAGE_EXTENSIONS)})")
    elif os.path.isfile(spec):
        paths = [spec]
    elif glob.has_magic(spec):
        paths = [p for p in glob.glob(spec) if os.path.isfile(p)]
        if not paths:
            raise DemoError(f"input pattern {spec!r} matches no file")
    else:
        raise DemoError(f"input {spec} does not exist (expected a video file, a folder of frames or a glob pattern)")
    return sorted(paths, key=natural_key)


def _read_files(paths):
    for path in paths:
        try:
            frame = read_frame(path, "BGR")
        except (FileNotFoundError, ValueError) as e:
            raise DemoError(f"cannot read input frame: {e}") from None
        yield os.path.splitext(os.path.basename(path))[0], frame


def _read_video(capture, first):
    try:
        yield f"{0:06d}", first
        for index in itertools.count(1):
            ok, frame = capture.read()
            if not ok:
                return
            yield f"{index:06d}", frame
    finally:
        capture.release()


class FrameInput:
    """The frames of one input, read lazily.

    Attributes:
        frames: iterator of (name, HxWx3 uint8 BGR frame); the name is the output file stem.
        total: the number of frames (a video's may be the container's estimate).
        fps: the input video's frame rate, None for image files.
        paths: the frame files in order, None for a video file.
        video: the name of the video, the output folder of its PNGs: a video file's name
            without extension, else the frames' folder, or the folder above it when that is
            VSPW's `origin` (data/<video>/origin).
    """

    def __init__(self, spec):
        is_video = os.path.isfile(spec) and not spec.lower().endswith(IMAGE_EXTENSIONS)
        if not is_video:
            self.paths = frame_files(spec)
            self.frames = _read_files(self.paths)
            self.total = len(self.paths)
            self.fps = None
            folder = os.path.dirname(os.path.abspath(self.paths[0]))
            if os.path.basename(folder) == "origin":
                folder = os.path.dirname(folder)
            self.video = os.path.basename(folder)
            return
        self.video = os.path.splitext(os.path.basename(spec))[0]
        capture = cv2.VideoCapture(spec)
        if not capture.isOpened():
            raise DemoError(f"input {spec} cannot be opened as a video")
        # Reading the first frame now reports an empty video before the model is built.
        ok, first = capture.read()
        if not ok:
            capture.release()
            raise DemoError(f"input video {spec} has no readable frames")
        fps = capture.get(cv2.CAP_PROP_FPS)
        self.paths = None
        self.total = max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 1)
        self.fps = fps if fps > 0 else None
        self.frames = _read_video(capture, first)


def _check_unique_stems(paths):
    seen = {}
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in seen:
            raise DemoError(f"input frames {seen[stem]} and {path} share the name {stem!r}: "
                            "their --output-dir PNGs would overwrite each other")
        seen[stem] = path


def _check_creatable(folder):
    """Fail when `folder` cannot be created or written, creating nothing: the outputs are
    checked before the model loads and made only once it has."""
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise DemoError(f"cannot create output folder {folder}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DemoError(f"cannot create output folder {folder}: {existing} is not writable")


def _check_outputs(video_path, output_dir):
    """Fail before any work when an output cannot be written (see _check_creatable)."""
    if video_path is not None:
        if os.path.isdir(video_path):
            raise DemoError(f"--output-video {video_path} is a folder; expected a video file path")
        _check_creatable(os.path.dirname(video_path) or ".")
        if os.path.exists(video_path) and not os.access(video_path, os.W_OK):
            raise DemoError(f"cannot write output video {video_path}: it is not writable")
    if output_dir is not None:
        _check_creatable(output_dir)


def _make_dir(path):
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise DemoError(f"cannot create output folder {path}: {e.strerror or e}") from None


class OutputWriter:
    """Writes each frame's overlay (video and/or PNG) and label PNG.

    PNGs go to `output_dir`/overlay/`video`/ and `output_dir`/labels/`video`/.
    """

    def __init__(self, video_path=None, output_dir=None, fps=DEFAULT_FPS, video="video"):
        if video_path is None and output_dir is None:
            raise ValueError("OutputWriter needs a video path or an output folder")
        self.video_path = video_path
        self.png_dirs = None if output_dir is None else {
            kind: os.path.join(output_dir, kind, video) for kind in ("overlay", "labels")
        }
        self.fps = fps
        self._video = None
        self._size = None
        # Made once the model has loaded; main() checked them with _check_outputs before.
        if video_path is not None:
            _make_dir(os.path.dirname(video_path) or ".")
            try:
                open(video_path, "wb").close()
            except OSError as e:
                raise DemoError(f"cannot write output video {video_path}: {e.strerror or e}") from None
        for folder in (self.png_dirs or {}).values():
            _make_dir(folder)

    def write(self, name, overlay_rgb, labels=None):
        """Write frame `name`'s overlay (HxWx3 RGB uint8) and labels (HxW uint8 train ids)."""
        overlay_bgr = np.ascontiguousarray(overlay_rgb[:, :, ::-1])
        if self.video_path is not None:
            self._write_video_frame(name, overlay_bgr)
        if self.png_dirs is not None:
            _write_png(os.path.join(self.png_dirs["overlay"], f"{name}.png"), overlay_bgr)
            _write_png(os.path.join(self.png_dirs["labels"], f"{name}.png"), labels)

    def _write_video_frame(self, name, frame):
        height, width = frame.shape[:2]
        if self._video is None:
            self._size = (width, height)
            self._video = cv2.VideoWriter(self.video_path, cv2.VideoWriter_fourcc(*"mp4v"), self.fps, self._size)
            if not self._video.isOpened():
                raise DemoError(f"cannot write output video {self.video_path} (OpenCV has no mp4v encoder "
                                "for it or the location is not writable)")
        elif (width, height) != self._size:
            raise DemoError(f"frame {name} is {width}x{height} but the output video {self.video_path} is "
                            f"{self._size[0]}x{self._size[1]}: a video needs every frame at one size")
        self._video.write(frame)

    def close(self):
        if self._video is not None:
            self._video.release()
            self._video = None


def _write_png(path, image):
    if not cv2.imwrite(path, image):
        raise DemoError(f"cannot write {path}")


def _class_names(predictor, dataset):
    """The class names the overlays need, with an error naming the dataset when missing."""
    metadata = predictor.metadata
    classes = metadata.get("stuff_classes") if metadata is not None else None
    if classes is None:
        raise DemoError(f"the demo needs stuff_classes in the metadata of DATASETS.TEST[0] ({dataset!r}): "
                        f"register that dataset or name a registered one with --opts DATASETS.TEST")
    return classes


def _check_classes(num_scores, classes, dataset):
    if num_scores != len(classes):
        raise DemoError(f"the model predicts {num_scores} classes but DATASETS.TEST[0] ({dataset!r}) has "
                        f"{len(classes)} stuff_classes")
    # The evaluator's rule for TEST.VSS.SAVE_PREDICTIONS: train ids stay below the ignore value.
    if num_scores > IGNORE_LABEL:
        raise DemoError(f"{num_scores} classes do not fit a uint8 label PNG (train ids 0..{IGNORE_LABEL - 1}; "
                        f"{IGNORE_LABEL} is the ignore value)")


def key_frame_ran(predictor):
    """Whether the frame the predictor just segmented was a key frame; None for models without key
    frames (their temporal head's frame plan names no key kind, or they have no temporal head)."""
    model = predictor.model
    plan = getattr(getattr(model, "temporal", None), "frame_plan", None)
    key = plan().key if plan is not None else None
    return None if key is None else model.frame_kinds[0] == key


def segment(predictor, source, writer, classes, dataset):
    """Run the predictor over `source` (a FrameInput) as one video and write every frame.

    Returns (frames, seconds, key frames or None when the model has no key frames).
    """
    frames_in, named = itertools.tee(source.frames)
    outputs = predictor.run(frame for _, frame in frames_in)
    count, keys = 0, 0
    start = time.perf_counter()
    with tqdm.tqdm(zip(named, outputs), total=source.total, unit="frame", dynamic_ncols=True) as progress:
        for (name, frame), output in progress:
            if count == 0:
                _check_classes(predictor.cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, classes, dataset)
            key = key_frame_ran(predictor)
            keys = None if key is None else keys + key
            labels = output_labels(output).to("cpu").numpy()
            overlay = Visualizer(frame[:, :, ::-1], predictor.metadata).draw_sem_seg(labels).get_image()
            writer.write(name, overlay, labels.astype(np.uint8))
            count += 1
    return count, time.perf_counter() - start, keys


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--input", required=True, metavar="PATH",
                        help="a video file, a folder of frames or a quoted glob pattern of frame files")
    parser.add_argument("--output-video", metavar="FILE", help="write the overlays as an mp4v video here")
    parser.add_argument("--output-dir", metavar="DIR",
                        help="write overlay/<video>/<stem>.png and labels/<video>/<stem>.png (0-based train ids, "
                             "as TEST.VSS.SAVE_PREDICTIONS writes them) here")
    parser.add_argument("--fps", type=float, help=f"output video frame rate (default: the input video's, "
                                                   f"else {DEFAULT_FPS:g})")
    parser.add_argument("--half", action="store_true", help="float16 autocast (CUDA only)")
    # "*" and not REMAINDER: options after the overrides are still options.
    parser.add_argument("--opts", default=[], nargs="*", metavar="KEY VALUE",
                        help="config overrides, up to the next option")
    add_debug_argument(parser)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.output_video is None and args.output_dir is None:
        parser.error("nothing to write: give --output-video and/or --output-dir")
    if args.fps is not None and args.fps <= 0:
        parser.error(f"--fps must be positive, got {args.fps:g}")
    if not os.path.isfile(args.config_file):
        parser.error(f"config file {args.config_file} does not exist")
    writer = None
    try:
        source = FrameInput(args.input)
        if args.output_dir is not None and source.paths is not None:
            _check_unique_stems(source.paths)
        cfg = setup_cfg(args.config_file, args.opts)
        if args.half and not cfg.MODEL.DEVICE.startswith("cuda"):
            parser.error(f"--half needs a CUDA device, but MODEL.DEVICE is {cfg.MODEL.DEVICE!r}")
        _check_outputs(args.output_video, args.output_dir)
        check_weights(cfg, args.config_file, training=False)
        predictor = VideoPredictor(cfg, half=args.half, labels_only=True)
        dataset = cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else None
        classes = _class_names(predictor, dataset)
        # Output files and folders only once the model has loaded: an error before leaves none behind.
        writer = OutputWriter(args.output_video, args.output_dir, args.fps or source.fps or DEFAULT_FPS, source.video)
        frames, seconds, keys = segment(predictor, source, writer, classes, dataset)
    finally:
        if writer is not None:
            writer.close()
    key_frames = "n/a" if keys is None else f"{keys}/{frames}"
    print(f"demo: {frames} frames in {seconds:.2f} s ({frames / seconds:.2f} frames/s, drawing and writing "
          f"included), key frames: {key_frames}")
    return 0


if __name__ == "__main__":
    setup_logger(name="vss")  # formatted warnings (e.g. the CPU fallback); not in main(), which tests call
    sys.exit(run_main(main, "demo.py", debug="--debug" in sys.argv[1:]))

import re

import cv2
import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model

from PIL import Image

from vss.data.io import read_frame
from vss.data.synthetic import generate
from vss.engine import Trainer, VideoPredictor, setup_cfg
from vss.engine.cli import run_main

from conftest import REPO, load_script
from test_evaluator import official_vc_perclip

HEIGHT, WIDTH, FRAMES = 48, 64, 4
CONFIG = str(REPO / "configs" / "synthetic" / "mask2former_tiny.yaml")
# Test-time resize to the frame size itself keeps the model cheap.
OPTS = ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", str(HEIGHT)]

demo = load_script(REPO / "demo" / "demo.py")


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """(frame folder, frame paths, random-weights checkpoint) of one synthetic 4-frame video."""
    root = tmp_path_factory.mktemp("synthetic")
    generate(root / "data", train_videos=1, val_videos=1, frames=FRAMES, height=HEIGHT, width=WIDTH)
    folder = root / "data" / "data" / "val_0000" / "origin"
    paths = sorted(folder.glob("*.jpg"))
    assert len(paths) == FRAMES
    torch.manual_seed(0)
    model = build_model(setup_cfg(CONFIG, OPTS + ["MODEL.WEIGHTS", ""]))
    DetectionCheckpointer(model, save_dir=str(root)).save("random")
    return folder, paths, str(root / "random.pth")


def _expected_labels(weights, frames):
    """Train-id maps (argmax) of the predictor run over `frames` as one video."""
    predictor = VideoPredictor(setup_cfg(CONFIG, OPTS + ["MODEL.WEIGHTS", weights]))
    return [o["sem_seg"].argmax(0).numpy().astype(np.uint8) for o in predictor.run(frames)]


def _run(argv, weights, capsys, config=CONFIG, opts=()):
    """Run the demo; returns (frames, key frames) from its summary line."""
    assert demo.main(["--config-file", config] + argv + ["--opts", "MODEL.WEIGHTS", weights, *opts] + OPTS) == 0
    out = capsys.readouterr().out
    summary = re.search(r"demo: (\d+) frames in [\d.]+ s \([\d.]+ frames/s.*\), key frames: (\S+)", out)
    assert summary, out
    return int(summary.group(1)), summary.group(2)


def _read_video(path):
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened()
    fps = capture.get(cv2.CAP_PROP_FPS)
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames, fps


def _check_dir(out, video, names, frames, expected):
    """Label PNGs (VSPW's result layout: labels/<video>/<frame>.png) equal the predictor's;
    overlays are the frames blended with the label colours."""
    colors = np.array(MetadataCatalog.get("synthetic_vss_val").stuff_colors, dtype=np.float64)
    assert [p.name for p in (out / "labels").iterdir()] == [video]
    assert [p.name for p in (out / "overlay").iterdir()] == [video]
    out_labels, out_overlay = out / "labels" / video, out / "overlay" / video
    assert sorted(p.stem for p in out_labels.iterdir()) == names
    assert sorted(p.stem for p in out_overlay.iterdir()) == names
    for name, frame, want in zip(names, frames, expected):
        labels = cv2.imread(str(out_labels / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        assert labels.dtype == np.uint8 and labels.shape == (HEIGHT, WIDTH)
        np.testing.assert_array_equal(labels, want)
        overlay = cv2.imread(str(out_overlay / f"{name}.png"))[:, :, ::-1].astype(np.float64)
        assert overlay.shape == (HEIGHT, WIDTH, 3)
        # draw_sem_seg blends each class's colour at alpha 0.8; edges and class names are
        # drawn over a few pixels only, so the median pixel follows the blend.
        blend = 0.2 * frame[:, :, ::-1] + 0.8 * colors[want.astype(int)]
        assert np.median(np.abs(overlay - blend)) < 8


def test_folder_to_video_and_pngs(video, tmp_path, capsys):
    folder, paths, weights = video
    out = tmp_path / "out"
    count, keys = _run(["--input", str(folder), "--output-video", str(out / "v.mp4"), "--output-dir", str(out)],
                       weights, capsys)
    assert (count, keys) == (FRAMES, "n/a")  # a per-frame model has no key frames
    frames = [read_frame(p, "BGR") for p in paths]
    # the frames of datasets' data/val_0000/origin: video "val_0000", as in VSPW
    _check_dir(out, "val_0000", [p.stem for p in paths], frames, _expected_labels(weights, frames))
    written, fps = _read_video(out / "v.mp4")
    assert len(written) == FRAMES and written[0].shape == (HEIGHT, WIDTH, 3)
    assert fps == pytest.approx(demo.DEFAULT_FPS)
    # the video holds the overlays (up to mp4 compression)
    overlay = cv2.imread(str(out / "overlay" / "val_0000" / f"{paths[1].stem}.png")).astype(np.float64)
    assert np.abs(written[1] - overlay).mean() < 10


def test_glob_input(video, tmp_path, capsys):
    _, paths, weights = video
    # unpadded names: the output stems are the file names, whatever their order
    renamed = tmp_path / "frames"
    renamed.mkdir()
    names = ["frame2", "frame10", "frame11", "frame100"]
    for name, path in zip(names, paths):
        (renamed / f"{name}.jpg").write_bytes(path.read_bytes())
    out = tmp_path / "out"
    count, _ = _run(["--input", str(renamed / "frame*.jpg"), "--output-dir", str(out)], weights, capsys)
    assert count == FRAMES and not (out / "v.mp4").exists()
    frames = [read_frame(p, "BGR") for p in paths]
    expected = dict(zip(names, _expected_labels(weights, frames)))
    _check_dir(out, "frames", sorted(names), [frames[names.index(n)] for n in sorted(names)],
               [expected[n] for n in sorted(names)])


def test_frame_files_order(tmp_path):
    names = ["frame10.png", "frame2.jpg", "frame1.PNG", "frame100.jpg"]
    for name in names + ["notes.txt"]:
        (tmp_path / name).write_bytes(b"")
    natural = ["frame1.PNG", "frame2.jpg", "frame10.png", "frame100.jpg"]
    assert [p.split("/")[-1] for p in demo.frame_files(str(tmp_path))] == natural  # notes.txt is no frame
    assert [p.split("/")[-1] for p in demo.frame_files(str(tmp_path / "frame*"))] == natural


def test_video_file_input(video, tmp_path, capsys):
    _, paths, weights = video
    source = tmp_path / "in.mp4"
    writer = cv2.VideoWriter(str(source), cv2.VideoWriter_fourcc(*"mp4v"), 7, (WIDTH, HEIGHT))
    for path in paths:
        writer.write(read_frame(path, "BGR"))
    writer.release()
    decoded, _ = _read_video(source)
    assert len(decoded) == FRAMES
    out = tmp_path / "out"
    count, _ = _run(["--input", str(source), "--output-video", str(out / "v.mp4"), "--output-dir", str(out)],
                    weights, capsys)
    assert count == FRAMES
    _check_dir(out, "in", [f"{i:06d}" for i in range(FRAMES)], decoded, _expected_labels(weights, decoded))
    written, fps = _read_video(out / "v.mp4")
    assert len(written) == FRAMES and written[0].shape == (HEIGHT, WIDTH, 3)
    assert fps == pytest.approx(7)  # the input video's rate


def test_fps_option_and_image_file_input(video, tmp_path, capsys):
    _, paths, weights = video
    out = tmp_path / "v.mp4"
    _run(["--input", str(paths[0]), "--output-video", str(out), "--fps", "4"], weights, capsys)
    written, fps = _read_video(out)
    assert len(written) == 1 and fps == pytest.approx(4)


def test_mpvss_counts_key_frames(video, tmp_path, capsys):
    folder, _, weights = video
    config = str(REPO / "configs" / "synthetic" / "mpvss_copy.yaml")
    # a per-frame checkpoint is what MPVSS Copy runs
    counts = _run(["--input", str(folder), "--output-dir", str(tmp_path)], weights, capsys, config,
                  ["MODEL.MPVSS.KEY_INTERVAL", "3"])
    assert counts == (FRAMES, "2/4")  # frames 0 and 3


def _error(argv, capsys):
    """The exit status and stderr of main(argv) run as the script runs it (run_main)."""
    with pytest.raises(SystemExit) as e:
        run_main(lambda: demo.main(argv), "demo.py")
    return e.value.code, capsys.readouterr().err


@pytest.mark.parametrize("case, reason", [
    ("missing", "does not exist"), ("empty_folder", "has no image files"), ("glob", "matches no file"),
    ("unreadable_frame", "is not a readable image"), ("empty_video", "has no readable frames"),
    ("not_a_video", "cannot be opened as a video"), ("same_stem", "share the name '0'"),
])
def test_input_errors(case, reason, video, tmp_path, capsys):
    _, paths, weights = video
    if case == "missing":
        path = tmp_path / "no_such_video.mp4"
    elif case == "empty_folder":
        path = tmp_path / "empty"
        path.mkdir()
        (path / "notes.txt").write_text("not a frame")
    elif case == "glob":
        path = tmp_path / "*.png"
    elif case == "unreadable_frame":
        path = tmp_path / "frames"
        path.mkdir()
        for p in paths:
            (path / p.name).write_bytes(p.read_bytes())
        bad = path / paths[2].name  # mid-video: the frames before it are already written
        bad.write_bytes(b"not a jpeg")
    elif case == "empty_video":
        path = tmp_path / "empty.avi"
        cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (WIDTH, HEIGHT)).release()
    elif case == "not_a_video":
        path = tmp_path / "garbage.mp4"
        path.write_bytes(b"\0" * 100)
    else:
        (tmp_path / "0.jpg").write_bytes(paths[0].read_bytes())
        bad = tmp_path / "0.png"
        bad.write_bytes(paths[1].read_bytes())
        path = tmp_path / "0.*"
    code, message = _error(["--config-file", CONFIG, "--input", str(path), "--output-dir", str(tmp_path / "out"),
                            "--opts", "MODEL.WEIGHTS", weights] + OPTS, capsys)
    assert code == 2 and reason in message
    assert str(bad if case in ("unreadable_frame", "same_stem") else path) in message


@pytest.mark.parametrize("opts, reason", [
    (["DATASETS.TEST", "('no_such_dataset',)"], "'no_such_dataset'"),
    (["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "5", "MODEL.WEIGHTS_ALLOW_PARTIAL", "True"],
     "predicts 5 classes but DATASETS.TEST[0] ('synthetic_vss_val') has 8"),
    (["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "5"], "random.pth does not fit the model (MaskFormer)"),
])
def test_metadata_errors(opts, reason, video, tmp_path, capsys):
    folder, _, weights = video
    code, message = _error(["--config-file", CONFIG, "--input", str(folder), "--output-dir", str(tmp_path),
                            "--opts", "MODEL.WEIGHTS", weights, *opts] + OPTS, capsys)
    assert code == 2 and reason in message


@pytest.mark.parametrize("option", ["--output-dir", "--output-video"])
def test_unwritable_output(option, video, tmp_path, capsys):
    folder, _, weights = video
    blocker = tmp_path / "file"
    blocker.write_text("a regular file, not a folder")
    target = blocker / "sub" / ("v.mp4" if option == "--output-video" else "out")
    code, message = _error(["--config-file", CONFIG, "--input", str(folder), option, str(target),
                            "--opts", "MODEL.WEIGHTS", weights] + OPTS, capsys)
    assert code == 2 and str(blocker / "sub") in message


def test_usage_errors(video, tmp_path, capsys):
    folder, _, _ = video
    code, message = _error(["--config-file", CONFIG, "--input", str(folder)], capsys)
    assert code == 2 and "--output-video and/or --output-dir" in message
    missing = tmp_path / "missing.yaml"
    code, message = _error(["--config-file", str(missing), "--input", str(folder), "--output-dir", str(tmp_path)],
                           capsys)
    assert code == 2 and str(missing) in message
    code, message = _error(["--config-file", CONFIG, "--input", str(folder), "--output-dir", str(tmp_path), "--half",
                            "--opts"] + OPTS, capsys)
    assert code == 2 and "--half needs a CUDA device" in message


def test_opts_then_more_options(video, tmp_path, capsys):
    # options after --opts's KEY VALUE pairs are options, not overrides
    folder, paths, weights = video
    out = tmp_path / "out"
    argv = ["--config-file", CONFIG, "--input", str(folder), "--opts", "MODEL.WEIGHTS", weights, *OPTS,
            "--output-dir", str(out), "--fps", "3"]
    args = demo.build_parser().parse_args(argv)
    assert args.opts == ["MODEL.WEIGHTS", weights, *OPTS] and args.output_dir == str(out) and args.fps == 3
    assert demo.main(argv) == 0
    assert sorted(p.name for p in (out / "labels" / "val_0000").iterdir()) == [f"{p.stem}.png" for p in paths]


@pytest.mark.parametrize("weights, reason", [
    ("", "MODEL.WEIGHTS is empty, so the model would have random weights: train it first with "
         "`.venv/bin/python train_net.py --config-file {config}`"),
    ("{tmp}/missing.pth", "MODEL.WEIGHTS {tmp}/missing.pth does not exist"),
])
def test_weights_errors(weights, reason, video, tmp_path, capsys):
    folder, _, _ = video
    code, message = _error(["--config-file", CONFIG, "--input", str(folder), "--output-dir", str(tmp_path / "out"),
                            "--output-video", str(tmp_path / "out" / "v.mp4"),
                            "--opts", "MODEL.WEIGHTS", weights.format(tmp=tmp_path)] + OPTS, capsys)
    assert code == 2 and reason.format(tmp=tmp_path, config=CONFIG) in message
    assert not (tmp_path / "out").exists()  # no empty output folders left behind


@pytest.mark.slow
def test_labels_score_like_saved_predictions(tmp_path, capsys):
    # A briefly trained model (a random one predicts almost one class): 17 frames, since the
    # official script skips videos of 16 frames or fewer.
    root = tmp_path / "videos"
    generate(root, train_videos=2, val_videos=1, frames=17, height=HEIGHT, width=WIDTH)
    opts = ["DATASETS.FOLDERS", str([["demo_score_train", str(root), "train"], ["demo_score_val", str(root), "val"]]),
            "DATASETS.TRAIN", "('demo_score_train',)", "DATASETS.TEST", "('demo_score_val',)",
            "INPUT.MIN_SIZE_TRAIN", f"({HEIGHT},)", "INPUT.CROP.SIZE", "(32,32)", "SOLVER.IMS_PER_BATCH", "2",
            "SOLVER.MAX_ITER", "60", "SOLVER.BASE_LR", "0.002", "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "256",
            "DATALOADER.NUM_WORKERS", "0", "SEED", "0", "OUTPUT_DIR", str(tmp_path / "run"),
            "TEST.VSS.SAVE_PREDICTIONS", "True", *OPTS]
    trainer = Trainer(setup_cfg(CONFIG, opts + ["MODEL.WEIGHTS", ""]))
    trainer.train()  # writes run/model_final.pth
    weights = str(tmp_path / "run" / "model_final.pth")
    results = Trainer.test(setup_cfg(CONFIG, opts + ["MODEL.WEIGHTS", weights]), trainer.model)["sem_seg"]
    saved = tmp_path / "run" / "inference" / "demo_score_val"

    out = tmp_path / "demo"
    _run(["--input", str(root / "data" / "val_0000" / "origin"), "--output-dir", str(out)], weights, capsys,
         opts=opts)
    names = sorted(p.name for p in (saved / "val_0000").iterdir())
    assert len(names) == 17 and sorted(p.name for p in (out / "labels" / "val_0000").iterdir()) == names
    for name in names:
        ours = np.asarray(Image.open(out / "labels" / "val_0000" / name))
        np.testing.assert_array_equal(ours, np.asarray(Image.open(saved / "val_0000" / name)), err_msg=name)

    official = official_vc_perclip(str(out / "labels"), str(root), 8, windows=(8,))
    assert 10 < results["mIoU"] < 100
    assert official["mIoU"] == pytest.approx(results["mIoU"], abs=1e-9)
    assert official["mVC8"] == pytest.approx(results["mVC8"], abs=1e-9)
    # The scoring tells the layouts apart: the same labels + the dataset's label_offset score far lower.
    for name in names:
        path = out / "labels" / "val_0000" / name
        Image.fromarray(np.asarray(Image.open(path)) + 1).save(path)
    assert official_vc_perclip(str(out / "labels"), str(root), 8, windows=(8,))["mIoU"] < results["mIoU"] - 5

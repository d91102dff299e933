import json
import math

import pytest
from matplotlib.image import imread

from vss.utils import tradeoff

from conftest import REPO, load_script

cli = load_script(REPO / "tools" / "plot_keyframe_tradeoff.py")

# what train_net.py writes: the coloured config dump, training, an evaluation during
# training (iteration 99) and the final one, plus another task's block that must be skipped
TRAIN_LOG = """\
[11/21 20:10:00] detectron2 INFO: Running with full config:
\x1b[38;5;255m    \x1b[39m\x1b[38;5;204mKEY_INTERVAL\x1b[39m\x1b[38;5;255m:\x1b[39m \x1b[38;5;141m5\x1b[39m
[11/21 20:10:00] detectron2 INFO: Full config saved to out/config.yaml
[11/21 20:20:00] d2.utils.events INFO:  eta: 0:01:00  iter: 99  total_loss: 3.1
[11/21 20:20:05] d2.engine.defaults INFO: Evaluation results for synthetic_vss_val in csv format:
[11/21 20:20:05] d2.evaluation.testing INFO: copypaste: Task: sem_seg
[11/21 20:20:05] d2.evaluation.testing INFO: copypaste: mIoU,WIoU,pACC,mVC8,mVC16
[11/21 20:20:05] d2.evaluation.testing INFO: copypaste: 30.0000,60.0000,70.0000,80.0000,80.0000
[11/21 20:27:22] d2.engine.defaults INFO: Evaluation results for synthetic_vss_val in csv format:
[11/21 20:27:22] d2.evaluation.testing INFO: copypaste: Task: sem_seg
[11/21 20:27:22] d2.evaluation.testing INFO: copypaste: mIoU,WIoU,pACC,mVC8,mVC16
[11/21 20:27:22] d2.evaluation.testing INFO: copypaste: 47.1039,76.2549,86.4019,nan,91.0442
[11/21 20:27:22] d2.evaluation.testing INFO: copypaste: Task: bbox
[11/21 20:27:22] d2.evaluation.testing INFO: copypaste: AP,AP50
[11/21 20:27:22] d2.evaluation.testing INFO: copypaste: 1.0000,2.0000
"""


def _eval_dir(tmp_path, name, log, k=None, policy="fixed"):
    """An OUTPUT_DIR as an eval-only run leaves it: log.txt and config.yaml."""
    folder = tmp_path / name
    folder.mkdir()
    (folder / "log.txt").write_text(log)
    if k is not None:
        (folder / "config.yaml").write_text(f"MODEL:\n  MPVSS:\n    KEY_INTERVAL: {k}\n    KEY_POLICY: {policy}\n")
    return folder


def _block(dataset, miou):
    return (
        f"[t] d2.engine.defaults INFO: Evaluation results for {dataset} in csv format:\n"
        "[t] d2.evaluation.testing INFO: copypaste: Task: sem_seg\n"
        "[t] d2.evaluation.testing INFO: copypaste: mIoU,WIoU\n"
        f"[t] d2.evaluation.testing INFO: copypaste: {miou:.4f},1.0000\n"
    )


def test_log_gives_last_result_of_the_task(tmp_path):
    log = tmp_path / "log.txt"
    log.write_text(TRAIN_LOG)
    metrics = tradeoff.read_log_results(str(log))
    assert metrics["mIoU"] == 47.1039 and metrics["WIoU"] == 76.2549 and metrics["mVC16"] == 91.0442
    assert math.isnan(metrics["mVC8"])
    assert tradeoff.read_log_results(str(log), task="bbox") == {"AP": 1.0, "AP50": 2.0}


def test_log_errors_name_the_file(tmp_path):
    log = tmp_path / "log.txt"
    log.write_text("[t] d2.utils.events INFO: iter: 9 total_loss: 3.1\n")
    with pytest.raises(ValueError, match=rf"{log}: no detectron2 'copypaste:' result for task 'sem_seg'"):
        tradeoff.read_log_results(str(log))
    log.write_text(TRAIN_LOG.replace("mIoU,WIoU,pACC,mVC8,mVC16\n", "mIoU,WIoU\n"))
    with pytest.raises(ValueError, match=rf"{log}:8: 2 metric names but 5 values"):
        tradeoff.read_log_results(str(log))


def test_log_of_an_unfinished_later_run_is_refused(tmp_path):
    # config.yaml belongs to the run that started last: an older result must not get its K
    log = tmp_path / "log.txt"
    log.write_text(TRAIN_LOG + "[t] detectron2 INFO: Full config saved to out/config.yaml\n")
    with pytest.raises(ValueError, match=rf"{log}: the run started at line 16 logged no result"):
        tradeoff.read_log_results(str(log))


def test_log_with_several_datasets_needs_one_chosen(tmp_path):
    log = tmp_path / "log.txt"
    log.write_text(_block("vspw_val", 40.0) + _block("cityscapes_video_val", 70.0))
    with pytest.raises(ValueError, match=r"several datasets \['cityscapes_video_val', 'vspw_val'\]"):
        tradeoff.read_log_results(str(log))
    assert tradeoff.read_log_results(str(log), dataset="vspw_val")["mIoU"] == 40.0
    with pytest.raises(ValueError, match=r"no result for dataset 'vspw_test'"):
        tradeoff.read_log_results(str(log), dataset="vspw_test")


def test_k_from_config_beside_the_log_or_from_the_tag(tmp_path):
    with_config = _eval_dir(tmp_path, "eval_k10", _block("v", 41.5), k=10)
    assert tradeoff.load_result(str(with_config)) == (10, 41.5, "fixed")
    assert tradeoff.load_result(str(with_config / "log.txt"), k_tag=10) == (10, 41.5, "fixed")
    with pytest.raises(ValueError, match=r"log.txt: tag says K=5 but .*config.yaml says K=10"):
        tradeoff.load_result(str(with_config), k_tag=5)

    bare = _eval_dir(tmp_path, "bare", _block("v", 45.0))
    assert tradeoff.load_result(str(bare), k_tag=2) == (2, 45.0, "fixed")
    with pytest.raises(ValueError, match=rf"{bare}/log.txt: K unknown; give it as K<k>:"):
        tradeoff.load_result(str(bare))
    with pytest.raises(ValueError, match=r"no metric 'mAP' for task 'sem_seg'; it has \['WIoU', 'mIoU'\]"):
        tradeoff.load_result(str(bare), k_tag=2, metric="mAP")
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path}/missing/log.txt: no such file"):
        tradeoff.load_result(str(tmp_path / "missing" / "log.txt"))


def test_json_format(tmp_path):
    path = tmp_path / "k5.json"
    path.write_text(json.dumps({"K": 5, "sem_seg": {"mIoU": 47.1, "WIoU": 76.25}}))
    assert tradeoff.read_json_results(str(path)) == (5, {"mIoU": 47.1, "WIoU": 76.25}, "fixed")
    assert tradeoff.load_result(str(path), metric="WIoU") == (5, 76.25, "fixed")
    with pytest.raises(ValueError, match=r"k5.json: tag says K=2 but .*k5.json \(\"K\"\) says K=5"):
        tradeoff.load_result(str(path), k_tag=2)

    untagged = tmp_path / "untagged.json"
    untagged.write_text(json.dumps({"sem_seg": {"mIoU": 50.0}}))
    assert tradeoff.load_result(str(untagged), k_tag=3) == (3, 50.0, "fixed")
    with pytest.raises(ValueError, match=r"untagged.json: K unknown"):
        tradeoff.load_result(str(untagged))

    for bad, message in [
        ({"K": 5, "mIoU": 1.0}, r"expected \{\"K\": <int>, 'sem_seg'"),
        ({"K": "5", "sem_seg": {"mIoU": 1.0}}, r"\"K\" must be a positive integer, got '5'"),
        ({"K": 0, "sem_seg": {"mIoU": 1.0}}, r"\"K\" must be a positive integer, got 0"),
    ]:
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=message):
            tradeoff.read_json_results(str(path))
    path.write_text(json.dumps({"K": 5, "sem_seg": {"mIoU": "47.1"}}))
    with pytest.raises(ValueError, match=r"k5.json: mIoU must be a number, got '47.1'"):
        tradeoff.load_result(str(path))
    path.write_text("{K: 5")
    with pytest.raises(ValueError, match=r"k5.json: not valid JSON"):
        tradeoff.read_json_results(str(path))


def test_average_gflops():
    # one key frame and K - 1 propagated ones; K = 5 gives the README's 15-frame mean 39.10
    assert tradeoff.average_gflops(110.56, 21.24, 5) == pytest.approx((110.56 + 4 * 21.24) / 5)
    assert tradeoff.average_gflops(110.56, 21.24, 5) == pytest.approx(39.104)
    assert tradeoff.average_gflops(110.56, 21.24, 2) == pytest.approx(65.90)
    assert tradeoff.average_gflops(110.56, 21.24, 1) == pytest.approx(110.56)


def test_argument_parsing():
    assert tradeoff.parse_run("query flow=K2:a/log.txt, K10:b.json,out/eval") == (
        "query flow",
        [(2, "a/log.txt"), (10, "b.json"), (None, "out/eval")],
    )
    with pytest.raises(ValueError, match=r"expected NAME=\[K<k>:\]PATH"):
        tradeoff.parse_run("a/log.txt")
    with pytest.raises(ValueError, match=r"K must be at least 1 in 'K0:a'"):
        tradeoff.parse_run("copy=K0:a")
    with pytest.raises(ValueError, match=r"empty path"):
        tradeoff.parse_run("copy=a,,b")
    assert tradeoff.parse_flops("KEY=110.56,NONKEY=21.24") == (110.56, 21.24)
    with pytest.raises(ValueError, match=r"expected KEY=<gflops>,NONKEY=<gflops>"):
        tradeoff.parse_flops("KEY=110.56")
    with pytest.raises(ValueError, match=r"'NONKEY=x' is not NAME=<number>"):
        tradeoff.parse_flops("KEY=1,NONKEY=x")


def _runs(tmp_path):
    for k, miou in [(2, 50.42), (5, 46.83), (10, 41.32)]:
        _eval_dir(tmp_path, f"copy_k{k}", _block("synthetic_vss_val", miou), k=k)
    (tmp_path / "flow_k5.json").write_text(json.dumps({"K": 5, "sem_seg": {"mIoU": 50.06}}))
    _eval_dir(tmp_path, "flow_k2", _block("synthetic_vss_val", 53.5))
    return [
        "--runs", ",".join(str(tmp_path / f"copy_k{k}") for k in (2, 5, 10)),
        "--runs", f"optical flow=K2:{tmp_path / 'flow_k2' / 'log.txt'},{tmp_path / 'flow_k5.json'}",
    ]


def test_main_writes_plot_and_table(tmp_path, capsys):
    args = _runs(tmp_path)
    args[1] = "copy=" + args[1]
    png = tmp_path / "plot.png"
    cli.main(args + ["--output", str(png), "--flops", "KEY=110.56,NONKEY=21.24", "--flops-label", "R50 480x853"])
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["mIoU", "K=2", "K=5", "K=10"]
    assert lines[2].split() == ["copy", "50.42", "46.83", "41.32"]
    assert lines[3].split() == ["optical", "flow", "53.50", "50.06", "-"]
    assert lines[4].split() == ["GFLOPs", "/", "frame", "65.90", "39.10", "30.17"]
    assert "GFLOPs: R50 480x853" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the FLOPs panel makes the figure wider (10 x 4.2 inches at 120 dpi)
    assert imread(png).shape[:2] == (504, 1200)

    single = tmp_path / "single.png"
    cli.main(args + ["--output", str(single)])
    assert "GFLOPs" not in capsys.readouterr().out
    assert imread(single).shape[:2] == (504, 660)


def test_main_errors_name_the_path(tmp_path):
    args = _runs(tmp_path)
    args[1] = "copy=" + args[1]
    missing = tmp_path / "nothing" / "log.txt"
    with pytest.raises(SystemExit, match=rf"error: {missing}: no such file"):
        cli.main(["--runs", f"copy=K2:{missing}", "--output", str(tmp_path / "p.png")])
    duplicate = f"copy=K2:{tmp_path / 'flow_k2'},{tmp_path / 'copy_k2'}"
    with pytest.raises(SystemExit, match=r"copy_k2: variant 'copy' already has a result for K=2"):
        cli.main(["--runs", duplicate, "--output", str(tmp_path / "p.png")])
    (tmp_path / "a_file").write_text("")
    with pytest.raises(SystemExit, match=r"error: cannot write .*a_file/p.png"):
        cli.main(args + ["--output", str(tmp_path / "a_file" / "p.png")])
    assert not (tmp_path / "p.png").exists()


def test_main_creates_the_output_folder(tmp_path, capsys):
    args = _runs(tmp_path)
    args[1] = "copy=" + args[1]
    png = tmp_path / "new" / "folder" / "plot.png"
    cli.main(args + ["--output", str(png)])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {png}" in capsys.readouterr().out


def test_adaptive_runs_are_labelled_and_not_mixed_with_fixed_ones(tmp_path, capsys):
    adaptive = [_eval_dir(tmp_path, f"adaptive_k{k}", _block("v", 50.0 + k), k=k, policy="adaptive") for k in (2, 5)]
    assert tradeoff.load_result(str(adaptive[0])) == (2, 52.0, "adaptive")
    path = tmp_path / "k10.json"
    path.write_text(json.dumps({"K": 10, "KEY_POLICY": "adaptive", "sem_seg": {"mIoU": 61.0}}))
    assert tradeoff.load_result(str(path)) == (10, 61.0, "adaptive")

    fixed = _eval_dir(tmp_path, "fixed_k10", _block("v", 40.0), k=10)
    png = str(tmp_path / "p.png")
    cli.main(["--runs", "flow=" + ",".join(map(str, adaptive + [path])), "--runs", f"copy={fixed}",
               "--output", png, "--flops", "KEY=10,NONKEY=2"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].split() == ["flow", "(adaptive,", "K", "=", "longest", "interval)", "52.00", "55.00", "61.00"]
    assert lines[3].split() == ["copy", "-", "-", "40.00"]
    assert lines[5] == ("adaptive key-frame policy: plotted at K = MODEL.MPVSS.KEY_INTERVAL, the longest interval; "
                        "its key frames may come sooner (the GFLOPs row assumes a key frame every K)")

    with pytest.raises(SystemExit, match=rf"variant 'flow' mixes key-frame policies: {fixed} is fixed, "
                                         rf"{adaptive[0]} adaptive; give them as two variants"):
        cli.main(["--runs", f"flow={adaptive[0]},{fixed}", "--output", png])
    path.write_text(json.dumps({"K": 10, "KEY_POLICY": "smart", "sem_seg": {"mIoU": 61.0}}))
    with pytest.raises(ValueError, match=r"k10.json: \"KEY_POLICY\" must be one of \('fixed', 'adaptive'\), "
                                         r"got 'smart'"):
        tradeoff.load_result(str(path))

"""tools/synthetic_benchmark.py: the whole protocol with --quick on a tiny set, and its options."""
import json
import math

import pytest
from matplotlib.image import imread

from vss.benchmark import synthetic as bench
from vss.benchmark.calibration import copy_loss
from vss.benchmark.synthetic_report import markdown, plot, tv3s_markdown
from vss.engine import METRICS, evaluate, learning_curve, train_once
from vss.engine.trainer import EVALUATIONS

from conftest import REPO, load_script

cli = load_script(REPO / "tools" / "synthetic_benchmark.py")


def numbers(tree, path=""):
    """(path, value) of every leaf of a JSON tree."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from numbers(v, f"{path}/{k}")
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from numbers(v, f"{path}/{i}")
    else:
        yield path, tree


def test_options_and_defaults(tmp_path):
    args = cli.parse_args(["--output", str(tmp_path)])
    assert args.iters == bench.BUDGETS and args.set == bench.DATA and args.parts == ("mpvss", "tv3s")
    assert cli.parse_args(["--only", "tv3s"]).parts == ("tv3s",)
    assert args.variants == list(bench.VARIANTS)
    assert cli.parse_args(["--variants", "query_flow", "optical_flow"]).variants == ["Optical flow",
                                                                                       "Query-based flow"]
    assert cli.parse_args(["--variants", "query_flow_pass_through"]).variants == [
        "Query-based flow, pass-through fusion start"]
    with pytest.raises(SystemExit):
        cli.parse_args(["--variants", "flow"])
    assert args.data == "vspw"
    assert args.json == str(REPO / "projects" / "results" / "synthetic_benchmark_vspw_seed0.json")
    assert cli.parse_args(["--data", "context", "--seed", "2"]).json.endswith("synthetic_benchmark_context_seed2.json")
    args = cli.parse_args(["--quick", "--output", str(tmp_path), "--tv3s-iters", "7", "--frames", "17"])
    assert args.iters == {**bench.QUICK_BUDGETS, "tv3s": 7}
    assert args.set == {**bench.QUICK_DATA, "frames": 17}
    assert args.json == str(tmp_path / "synthetic_benchmark.json")  # a smoke test keeps the reported numbers
    # every stage tests at the set's height and trains around it, as the configs do around 120
    assert bench.sizes(120) == ["INPUT.MIN_SIZE_TRAIN", (96, 108, 120, 132, 144), "INPUT.MIN_SIZE_TEST", 120]
    assert bench.sizes(144) == ["INPUT.MIN_SIZE_TRAIN", (115, 130, 144, 158, 173), "INPUT.MIN_SIZE_TEST", 144]
    # FlowNet's steps at 1/3, 1/2, 2/3 of the schedule, strictly inside it
    assert bench.flow_schedule(600) == ["SOLVER.MAX_ITER", 600, "SOLVER.STEPS", (200, 300, 400)]
    assert bench.flow_schedule(6) == ["SOLVER.MAX_ITER", 6, "SOLVER.STEPS", (2, 3, 4)]


@pytest.mark.slow
def test_quick_run_writes_every_number(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--quick", "--output", str(out), "--train-videos", "1", "--val-videos", "1", "--frames", "17",
            "--height", "48", "--width", "64"]
    cli.main(argv)
    log = capsys.readouterr().out
    assert "[benchmark" in log and "tv3s clip eval: done" in log and "tv3s reset eval: done" in log
    res = json.loads((out / "synthetic_benchmark.json").read_text())
    assert res["dataset"] == {"train_videos": 1, "val_videos": 1, "frames": 17, "height": 48, "width": 64}
    assert list(res["mpvss"]) == list(bench.VARIANTS)
    for name, result in res["mpvss"].items():
        assert sorted(result["K"], key=int) == ["2", "5", "10"]
        for k, r in result["K"].items():
            assert set(r) >= {"mIoU", "WIoU", "mVC8", "mVC16", "GFLOPs"}
        assert set(result["flow_epe"]["gaps"]) == {str(g) for g in range(1, 11)}
        assert list(result["flow_epe"]["EPE_classes"]) == list(bench.SYNTHETIC_CLASSES)
        # the propagated frames scored with the variant's flow and with the true flow
        assert set(result["flow_epe"]["propagation"]) == {"flow", "true flow"}
        for scores in result["flow_epe"]["propagation"].values():
            assert 0 <= scores["mIoU"] <= 100 and "IoU-car" in scores
        # the key frame costs the same in every variant; propagation costs less, more so at larger K
        gflops = [result["K"][k]["GFLOPs"] for k in ("2", "5", "10")]
        assert gflops[0] > gflops[1] > gflops[2] > 0
        assert gflops[0] < res["mask2former"]["GFLOPs"]
    assert set(res["tv3s"]) == {"stream", "clip", "reset per frame"}
    # TV3S's set: the same videos at twice the frame size
    assert res["tv3s_dataset"] == {"height": 96, "width": 128}
    assert set(res["segformer"]) == {"full resolution", "scan resolution", "fine-tuned as TV3S"}
    # learning curves of TV3S and of the per-frame control, evaluated at the same iterations
    tv3s_curve, control_curve = res["tv3s"]["stream"]["curve"], res["segformer"]["fine-tuned as TV3S"]["curve"]
    assert [p["iter"] for p in tv3s_curve] == [p["iter"] for p in control_curve] == [2, 4]
    # the reported streaming result, the curve's last point, is that of the saved final weights
    again = evaluate("TV3S", str(REPO / "configs" / "synthetic" / "tv3s_finetune.yaml"),
                     str(out / "tv3s" / "model_final.pth"),
                     ["DATASETS.TEST", f"('{bench.TV3S_VAL}',)", "INPUT.MIN_SIZE_TEST", 96, "DATALOADER.NUM_WORKERS", 0])
    assert {m: again[m] for m in METRICS} == pytest.approx({m: res["tv3s"]["stream"][m] for m in METRICS})
    assert "Query-based flow, pass-through fusion start" in res["mpvss"]
    # the MPVSS variants' learning curves at their test K (5), the last point their final weights'
    assert res["mpvss"]["Copy"]["curve"] == []
    for name in ("Optical flow", "Query-based flow"):
        curve = res["mpvss"][name]["curve"]
        assert [p["iter"] for p in curve] == [1, 2, 3]
        assert curve[-1]["mIoU"] == pytest.approx(res["mpvss"][name]["K"]["5"]["mIoU"])
    assert set(res["flownets"]) == {"evaluator", "diagnostics"}
    # the set's calibration numbers, measured on this run (the default set is the vspw preset)
    full, scan = res["segformer"]["full resolution"], res["segformer"]["scan resolution"]
    assert res["calibration"] == pytest.approx({
        "copy of the ground truth, K=5: mIoU loss": copy_loss("vspw", 0, data=res["dataset"]),
        "per-frame mVC8": full["mVC8"], "scan-resolution ceiling: SegFormer mIoU loss": full["mIoU"] - scan["mIoU"]})
    assert 0 < res["calibration"]["copy of the ground truth, K=5: mIoU loss"] < 100
    # Copy's flow is zero: its EPE is the mean ground-truth motion, what FlowEvaluator calls EPE_zero
    assert res["mpvss"]["Copy"]["flow_epe"]["EPE"] > 0
    leaves = list(numbers(res))
    for path, value in leaves:
        if value is None:  # a mean over no pixel, e.g. no static pixel at some gap, a class not in the frames
            assert any(part in path for part in ("EPE_static", "EPE_objects", "EPE_moving", "EPE_classes/",
                                                 "/IoU-")), path
        elif isinstance(value, float):
            assert math.isfinite(value), path
    for path, value in leaves:
        if path.rsplit("/", 1)[-1] in ("mIoU", "WIoU", "mVC8", "GFLOPs", "EPE"):
            assert isinstance(value, (int, float)), path
    table = (out / "synthetic_benchmark.md").read_text()
    assert "## Calibration (baselines only)" in table and "| per-frame mVC8 " in table
    assert "| Query-based flow" in table and "| TV3S (stream)" in table and "mIoU, true flow" in table
    assert "| TV3S (reset per frame)" in table and "Temporal contribution (TV3S streamed minus" in table
    assert imread(out / "synthetic_benchmark.png").shape[-1] in (3, 4)
    # --only: the table and plot of one part
    for part, keys in (("mpvss", ("tv3s_dataset", "segformer", "tv3s")),
                       ("tv3s", ("dataset", "flownets", "mask2former", "mpvss"))):
        one = {k: v for k, v in res.items() if k not in keys}
        table = markdown(one)
        assert ("## MPVSS" in table) == (part == "mpvss") and ("## TV3S" in table) == (part == "tv3s")
        plot(one, tmp_path / f"{part}.png")
        assert imread(tmp_path / f"{part}.png").shape[-1] in (3, 4)


def test_tv3s_table_shows_the_temporal_contribution():
    def scores(miou, mvc8):
        return {"mIoU": miou, "WIoU": miou + 10, "mVC8": mvc8, "mVC16": mvc8 - 1}

    curve = [{"iter": 4, **scores(70.4, 94.39)}]
    res = {"tv3s_dataset": {"height": 240, "width": 320},
           "segformer": {"full resolution": scores(80.0, 95.0), "scan resolution": scores(75.0, 95.5),
                         "fine-tuned as TV3S": {**scores(79.0, 95.2), "curve": curve}},
           "tv3s": {"stream": {**scores(70.4, 94.39), "curve": curve}, "clip": scores(69.0, 93.0),
                    "reset per frame": scores(70.0, 94.52)}}
    lines = tv3s_markdown(res)
    table = next(line for line in lines if line.startswith("| model"))
    rows = {cells[0]: cells[1:] for cells in ([c.strip() for c in row.strip("|").split("|")]
                                              for row in table.splitlines()[2:])}
    assert rows["TV3S (reset per frame)"] == ["70.0", "80.0", "94.5", "93.5"]
    assert "Temporal contribution (TV3S streamed minus the same weights with the state reset at every frame): " \
           "+0.4 mIoU, -0.1 mVC8." in lines
    # on the context task the context pixels' metrics get their own columns and differences
    for r in (res["segformer"]["full resolution"], res["tv3s"]["stream"], res["tv3s"]["reset per frame"]):
        r.update({"mIoU (context)": r["mIoU"] / 2, "pACC (context)": r["mIoU"] - 20})
    lines = tv3s_markdown(res)
    table = next(line for line in lines if line.startswith("| model"))
    assert [c.strip() for c in table.splitlines()[0].split("|")[-3:-1]] == ["mIoU (context)", "pACC (context)"]
    assert any(line.startswith("| SegFormer-B0 at TV3S's scan resolution") and line.rstrip("| ").endswith("-")
               for line in table.splitlines())
    assert any(line.endswith("+0.2 mIoU (context), +0.4 pACC (context).") for line in lines)
    # results written before the reset row have no such line
    del res["tv3s"]["reset per frame"]
    assert not any("Temporal contribution" in line for line in tv3s_markdown(res))


def test_a_trained_stage_is_not_retrained(tmp_path):
    final = tmp_path / "model_final.pth"
    final.write_bytes(b"")
    lines = []
    # the config would fail to train (no such dataset): reuse must not even build it
    assert train_once("X", "no/such/config.yaml", str(tmp_path), log=lines.append) == str(final)
    assert lines == [f"X: using the trained {final}"]


def test_learning_curve_reads_the_runs_own_windows(tmp_path):
    results = {"mIoU": 50.0, "WIoU": 49.0, "mVC4": 90.0, "mVC8": 80.0, "mVC16": 70.0}
    with open(tmp_path / EVALUATIONS, "w") as f:
        for done, shift in (5, 0.0), (10, 1.0):
            f.write(json.dumps({"iter": done, "results": {"sem_seg": {m: v + shift for m, v in results.items()}}})
                    + "\n")
    # no saved config (a train_once run): the default windows
    assert learning_curve(str(tmp_path)) == [
        {"iter": 5, **{m: results[m] for m in METRICS}}, {"iter": 10, **{m: results[m] + 1 for m in METRICS}}]
    # train_net.py's saved config with other windows: those
    (tmp_path / "config.yaml").write_text("TEST:\n  VSS:\n    VC_WINDOWS: [4]\n")
    assert learning_curve(str(tmp_path)) == [{"iter": 5, "mIoU": 50.0, "WIoU": 49.0, "mVC4": 90.0},
                                             {"iter": 10, "mIoU": 51.0, "WIoU": 50.0, "mVC4": 91.0}]


def test_seed_table_of_new_and_old_results_files():
    from vss.benchmark.synthetic_report import tv3s_seeds_table

    def run(miou, modes):
        scores = {"mIoU": miou, "WIoU": miou, "mVC8": 90.0, "mVC16": 89.0}
        return {"segformer": {k: scores for k in ("full resolution", "scan resolution", "fine-tuned as TV3S")},
                "tv3s": {mode: scores for mode in modes}}

    old, new = run(70.0, ["stream", "clip"]), run(80.0, ["stream", "clip", "reset per frame"])
    for runs in ({0: old, 1: new}, {1: new, 0: old}):
        rows = {line.split("|")[1].strip(): line for line in tv3s_seeds_table(runs).splitlines()[2:]}
        assert "TV3S (reset per frame)" in rows and "-" in rows["TV3S (reset per frame)"].split("|")[2]

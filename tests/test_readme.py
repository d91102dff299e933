"""The READMEs' example commands run as written after `make demo`.

Every shell command of the READMEs' code blocks and every Python block is an example. Those this
machine can run are run, in README order, in a scratch folder laid out as a clone after
`make demo` (the quickstart's checkpoints, the synthetic set), with tiny settings appended: a
smaller synthetic set and 2 training iterations. They run in one separate process (this file
run as a script), so the libraries are imported once.

The READMEs' result tables are those of the results files they cite (demo/quickstart_results.json,
projects/results/*.json), so a rerun that changes the numbers changes both.
"""
import json
import os
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
READMES = ["README.md", "projects/MPVSS/README.md", "projects/TV3S/README.md", "datasets/README.md"]
_COMMAND = re.compile(r"^(?:[A-Z_]+=\S+ )*(?:\S*/)?python3? ")
# Why an example cannot run here; the first matching rule applies.
NOT_HERE = [
    (re.compile(r"(?<![\w.])(CONFIG|KEY VALUE)\b|\[--|path/to/|(?<![\w.])/data/"),
     "a template with placeholders or the user's own data"),
    (re.compile(r"tools/convert_\w+\.py"), "converts downloaded official weights"),
    (re.compile(r"--num-gpus"), "needs several GPUs"),
    (re.compile(r"configs/(vspw|cityscapes)/|prepare_cityscapes_video"), "needs VSPW or Cityscapes, or full-size models"),
    (re.compile(r"tools/(analyze_model|benchmark\w*)\.py"), "a timing tool (tests/test_tools.py runs it)"),
]
# Tiny settings appended to a script's arguments (later options and overrides win).
SYNTHETIC = ["--train-videos", "1", "--val-videos", "1", "--frames", "10"]
TRAIN = ["SOLVER.MAX_ITER", "2", "DATALOADER.NUM_WORKERS", "0"]
QUICKSTART = {"flownets": "flownets_pretrain.yaml", "mask2former": "mask2former_tiny.yaml",
              "mpvss": "mpvss_query_flow.yaml", "segformer": "segformer_tiny.yaml", "tv3s": "tv3s_finetune.yaml"}


def examples(path):
    """[(line number, "shell" or "python", text)] of one README, in order."""
    lines = Path(path).read_text().splitlines()
    found, fence, index = [], None, 0
    while index < len(lines):
        line = lines[index]
        if line.lstrip().startswith("```"):
            if fence is None:
                fence = (line.strip()[3:], index + 1, [])
            else:
                if fence[0] == "python":
                    found.append((fence[1], "python", "\n".join(fence[2])))
                fence = None
        elif fence is not None:
            fence[2].append(line)
        elif line.startswith("    ") and _COMMAND.match(line.strip()):
            start, text = index + 1, line.strip()
            while text.endswith("\\"):
                index += 1
                text = text[:-1].rstrip() + " " + lines[index].strip()
            found.append((start, "shell", text))
        index += 1
    return found


def not_here(text):
    """Why an example cannot run on this machine, or None."""
    return next((reason for rule, reason in NOT_HERE if rule.search(text)), None)


def all_examples():
    return [(readme, line, kind, text) for readme in READMES for line, kind, text in examples(REPO / readme)]


def test_examples_use_the_venv_python():
    bare = [(readme, line, text) for readme, line, kind, text in all_examples()
            if kind == "shell" and not re.search(r"(^| )\.venv/bin/python ", text)]
    assert bare == []


def test_examples_are_found_and_classified():
    runnable = [(readme, text) for readme, _, _, text in all_examples() if not_here(text) is None]
    # the README's own examples, and each project's synthetic reproduction, are among them
    texts = [text for _, text in runnable]
    assert any(t.startswith(".venv/bin/python demo/demo.py") for t in texts)
    assert any("VideoPredictor(cfg)" in t for t in texts)
    assert any("DATASETS.FOLDERS" in t for t in texts)
    assert {readme for readme, _ in runnable} == set(READMES)
    assert not_here(".venv/bin/python train_net.py --config-file CONFIG --resume")
    assert not_here(".venv/bin/python train_net.py --config-file configs/synthetic/tv3s_tiny.yaml "
                    "MODEL.TV3S.INFERENCE clip") is None


@pytest.mark.slow
def test_readme_examples_run_after_make_demo(tmp_path):
    for name in ["configs", "demo", "tools", "train_net.py"]:
        (tmp_path / name).symlink_to(REPO / name)
    (tmp_path / "datasets").mkdir()
    for script in (REPO / "datasets").glob("*.py"):
        (tmp_path / "datasets" / script.name).symlink_to(script)
    todo = [(f"{readme}:{line}", kind, text) for readme, line, kind, text in all_examples() if not_here(text) is None]
    (tmp_path / "examples.json").write_text(json.dumps(todo))
    env = {k: v for k, v in os.environ.items() if k != "DETECTRON2_DATASETS"}
    run = subprocess.run([sys.executable, str(Path(__file__)), str(tmp_path / "examples.json")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=1500,
                         env={**env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    assert re.findall(r"^example ok: (\S+)$", run.stdout, re.M) == [where for where, _, _ in todo]
    # what the examples promise is there
    assert len(list((tmp_path / "output" / "demo" / "labels" / "val_0000").glob("*.png"))) == 10
    assert (tmp_path / "output" / "demo.mp4").stat().st_size > 0
    assert "Per-class IoU on my_videos_val" in (tmp_path / "output" / "eval" / "my_videos" / "log.txt").read_text()


def _after_make_demo():
    """The state `make demo` leaves, at the tiny size: the synthetic set, and the quickstart's
    checkpoints (random weights: these examples check that commands run, not accuracy)."""
    from detectron2.checkpoint import DetectionCheckpointer

    from vss.data.synthetic import generate
    from vss.engine import Trainer, setup_cfg

    generate("datasets/synthetic_vss_vspw", train_videos=1, val_videos=1, frames=10, effects="vspw")
    for folder, config in QUICKSTART.items():
        model = Trainer.build_model(setup_cfg(f"configs/synthetic/{config}", ["MODEL.WEIGHTS", ""]))
        os.makedirs(f"output/quickstart/{folder}")
        DetectionCheckpointer(model, save_dir=f"output/quickstart/{folder}").save("model_final")


def _run_shell(text):
    words = shlex.split(text, comments=True)
    while "=" in words[0]:  # VAR=value in front of the command
        key, value = words.pop(0).split("=", 1)
        os.environ[key] = value
    script, args = words[1], words[2:]
    if script == "datasets/prepare_synthetic.py":
        args += SYNTHETIC
    elif script == "train_net.py" and "--eval-only" not in args:
        args += TRAIN
    sys.argv = [script, *args]
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        if e.code not in (None, 0):
            raise RuntimeError(f"{text} exited with {e.code}") from None


def _main(todo_file):
    _after_make_demo()
    for where, kind, text in json.loads(Path(todo_file).read_text()):
        print(f"example: {where}: {text}", flush=True)
        if kind == "python":
            exec(compile(text, where, "exec"), {"__name__": "__readme__"})
        else:
            _run_shell(text)
        print(f"example ok: {where}", flush=True)


if __name__ == "__main__":
    _main(sys.argv[1])


# README figures and the results files they come from


def _table_rows(text, header):
    """The cells of each body row of the Markdown table whose header row starts with `header`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_quickstart_figures_are_the_results_file():
    from vss.benchmark.quickstart import results_table

    results = json.loads((REPO / "demo" / "quickstart_results.json").read_text())
    assert {"seed", "threads", "torch"} <= results.keys()
    readme = (REPO / "README.md").read_text()
    assert results_table(results) in readme
    copy, query = (" / ".join(f"{results['tradeoff_mIoU'][name][f'K={k}']:.1f}" for k in (2, 5, 10))
                   for name in ("copy", "query flow"))
    flat = " ".join(readme.split())
    assert f"({copy} mIoU for Copy at K = 2 / 5 / 10 against {query} for query flow)" in flat


def test_quickstart_seed_spread_is_the_results_files():
    from vss.benchmark.quickstart import seeds_table

    runs = json.loads((REPO / "demo" / "quickstart_seeds.json").read_text())
    assert [r["seed"] for r in runs] == [0, 1, 2]
    # the README's main table is the SEED 0 run of this file
    assert runs[0]["models"] == json.loads((REPO / "demo" / "quickstart_results.json").read_text())["models"]
    readme = (REPO / "README.md").read_text()
    assert seeds_table(runs) in readme
    if "Copy stays above query flow at every K for all three seeds" in " ".join(readme.split()):
        assert all(r["tradeoff_mIoU"]["copy"][k] > r["tradeoff_mIoU"]["query flow"][k]
                   for r in runs for k in ("K=2", "K=5", "K=10"))


def test_seed_spread_matches_models_by_name():
    from vss.benchmark.quickstart import seeds_table

    def run(seed, *models):
        return {"seed": seed, "models": [{"model": name, "mIoU": miou, "mVC8": mvc8} for name, miou, mvc8 in models]}

    # seed 1 ran an older quickstart (no reset row) and listed the models in another order
    runs = [run(0, ("A", 80.0, 97.0), ("TV3S (streaming)", 70.4, 94.4), ("TV3S (reset per frame)", 70.0, 94.5)),
            run(1, ("TV3S (streaming)", 69.9, 94.3), ("A", 81.0, 96.0)),
            run(2, ("A", 79.0, 96.5), ("TV3S (streaming)", 68.9, 93.8), ("TV3S (reset per frame)", 69.2, 93.5))]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in seeds_table(runs).splitlines()[2:]]
    assert rows == [["A", "80.0 / 81.0 / 79.0", "2.0", "97.0 / 96.0 / 96.5", "1.0"],
                    ["TV3S (streaming)", "70.4 / 69.9 / 68.9", "1.5", "94.4 / 94.3 / 93.8", "0.6"],
                    ["TV3S (reset per frame)", "70.0 / - / 69.2", "0.8", "94.5 / - / 93.5", "1.0"]]


@pytest.mark.parametrize("model, readme, header", [
    ("MPVSS", "projects/MPVSS/README.md", "| MPVSS, K = 5 |"),
    ("TV3S", "projects/TV3S/README.md", "| TV3S, streamed |"),
])
def test_recipe_ablation_tables_are_the_results_file(model, readme, header):
    results = json.loads((REPO / "projects" / "results" / "recipe_ablation.json").read_text())
    runs = list(results[model].values())
    reference = runs[0]
    rows = _table_rows((REPO / readme).read_text(), header)
    assert len(rows) == len(runs)
    for row, run in zip(rows, runs):
        seeds = " / ".join(f"{run['runs'][str(s)]['mIoU']:.1f}" for s in results["seeds"])
        expected = [seeds]
        for metric in ("mIoU", "mVC8"):
            delta = run[metric]["mean"] - reference[metric]["mean"]
            expected += [f"{run[metric]['mean']:.1f} ± {run[metric]['std']:.1f}",
                         "" if run is reference else f"{delta:+.1f}"]
        assert row[1:] == expected, row[0]


# caption of each variant table in projects/MPVSS/README.md -> the benchmark run it shows
BENCHMARK_TABLES = {"Clean set, seed 0": "synthetic_benchmark.json",
                    "Effects set, seed 0": "synthetic_benchmark_effects.json",
                    "Clean set, seed 1": "synthetic_benchmark_seed1.json"}


@pytest.mark.parametrize("caption", BENCHMARK_TABLES)
def test_mpvss_variant_tables_are_the_benchmark_results(caption):
    results = json.loads((REPO / "projects" / "results" / BENCHMARK_TABLES[caption]).read_text())["mpvss"]
    text = (REPO / "projects" / "MPVSS" / "README.md").read_text()
    lines = text[text.index(f"\n{caption}"):].splitlines()
    header = next(line for line in lines if line.startswith("| variant"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    rows = _table_rows("\n".join(lines), header)
    names = {"Copy (zero flow)": "Copy"}
    checked = 0
    for row in rows:
        name = names.get(row[0], row[0])
        if name not in results:  # the per-frame row, measured apart
            continue
        run = results[name]
        expected = {"K=2": f"{run['K']['2']['mIoU']:.1f}", "K=5": f"{run['K']['5']['mIoU']:.1f}",
                    "K=10": f"{run['K']['10']['mIoU']:.1f}", "mVC8 K=5": f"{run['K']['5']['mVC8']:.1f}",
                    "EPE objects": f"{run['flow_epe']['EPE_objects']:.2f}", "EPE all": f"{run['flow_epe']['EPE']:.2f}"}
        for column, cell in zip(columns, row):
            if column in expected:
                assert cell.strip("*") == expected[column], (name, column)
        checked += 1
    assert checked == len(results)


def test_tv3s_benchmark_table_is_the_benchmark_results():
    results = json.loads((REPO / "projects" / "results" / "synthetic_benchmark.json").read_text())
    seg, tv3s = results["segformer"], results["tv3s"]
    # the table's rows in order; a row after these was measured apart (the README says so)
    runs = [seg["full resolution"], seg["scan resolution"], seg["fine-tuned as TV3S"], tv3s["stream"], tv3s["clip"]]
    rows = _table_rows((REPO / "projects" / "TV3S" / "README.md").read_text(), "| model | mIoU | WIoU | mVC8 | mVC16 |")
    assert len(rows) >= len(runs)
    for row, run in zip(rows, runs):
        assert row[1:] == [f"{run[m]:.1f}" for m in ("mIoU", "WIoU", "mVC8", "mVC16")], row[0]


# The benchmark's results files on the vspw preset: seed 1 ran each part apart, seed 2 is one whole run
VSPW_MPVSS = {1: "synthetic_benchmark_vspw_seed1_mpvss.json", 2: "synthetic_benchmark_vspw_seed2.json"}
VSPW_TV3S = {1: "synthetic_benchmark_vspw_seed1_tv3s.json", 2: "synthetic_benchmark_vspw_seed2.json"}
# README tables of the TV3S part on several seeds -> the results files they render, seed by seed
TV3S_SEED_TABLES = [("README.md", {0: "context_tv3s_seed0.json", 1: "context_tv3s_seed1.json"}),
                    ("projects/TV3S/README.md", {0: "context_tv3s_seed0.json", 1: "context_tv3s_seed1.json"}),
                    ("README.md", VSPW_TV3S),
                    ("projects/TV3S/README.md", VSPW_TV3S)]


@pytest.mark.parametrize("readme, files", TV3S_SEED_TABLES)
def test_tv3s_seed_tables_are_the_results_files(readme, files):
    from vss.benchmark.synthetic_report import tv3s_seeds_table

    runs = {seed: json.loads((REPO / "projects" / "results" / name).read_text()) for seed, name in files.items()}
    assert tv3s_seeds_table(runs) in (REPO / readme).read_text()


def test_calibration_table_is_the_calibration_file():
    record = json.loads((REPO / "projects" / "results" / "calibration_vspw.json").read_text())
    header = "| what the preset is calibrated on | VSPW | target | vspw preset | clean set |"
    rows = _table_rows((REPO / "README.md").read_text(), header)
    full = record["segformer"]["full resolution"]
    assert [row[3] for row in rows] == [
        f"**{record['copy of the ground truth, K=5: mIoU loss']:.1f}**",
        f"**{record['per-frame mVC8']:.1f}** (at {full['mIoU']:.1f} mIoU)",
        f"**{record['scan-resolution ceiling: SegFormer mIoU loss']:.1f}** (missed)"]


CONTEXT_MPVSS = {0: "context_mpvss_seed0.json", 1: "context_mpvss_seed1.json"}


@pytest.mark.parametrize("readme", ["README.md", "projects/MPVSS/README.md"])
@pytest.mark.parametrize("files", [VSPW_MPVSS, CONTEXT_MPVSS], ids=["vspw", "context"])
def test_mpvss_summaries_are_the_results_files(readme, files):
    from vss.benchmark.synthetic_report import mpvss_summary_table

    runs = {seed: json.loads((REPO / "projects" / "results" / name).read_text()) for seed, name in files.items()}
    assert mpvss_summary_table(runs) in (REPO / readme).read_text()


# README's state-carry table -> the diagnostic's results files, by the name the table gives each
STATE_CARRY = {"vspw seed 1": "state_carry_vspw_seed1.json", "vspw seed 2": "state_carry_vspw_seed2.json",
               "context seed 0": "state_carry_context_seed0.json", "untrained": "state_carry_context_untrained.json"}


def test_state_carry_tables_are_the_results_files():
    from vss.evaluation.clip_gradient import gradient_table
    from vss.evaluation.state_carry import comparison

    results = {name: json.loads((REPO / "projects" / "results" / file).read_text())
               for name, file in STATE_CARRY.items()}
    readme = (REPO / "README.md").read_text()
    assert comparison(results) in readme and gradient_table(results) in readme


def test_calibration_of_the_new_seeds_is_the_results_files():
    from vss.benchmark.synthetic_report import calibration_table

    runs = {seed: json.loads((REPO / "projects" / "results" / name).read_text())["calibration"]
            for seed, name in VSPW_TV3S.items()}
    assert calibration_table(runs) in (REPO / "README.md").read_text()

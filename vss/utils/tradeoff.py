"""The key-frame trade-off (MPVSS's Figure 3): one metric per key-frame interval K and variant,
read from evaluation outputs (detectron2 logs, run folders, JSON results), as a table and a plot
with the mean GFLOPs per frame. tools/plot_keyframe_tradeoff.py is its command line; its help
describes the inputs.
"""
import json
import os
import re

import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tabulate import tabulate

from .flops import interval_cost

# detectron2's logger colours the config dump in log.txt; copypaste lines are plain, but a log
# passed through a terminal may carry escape codes anywhere
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_COPYPASTE = re.compile(r"copypaste: (.*)$")
_DATASET = re.compile(r"Evaluation results for (\S+) in csv format:")
# written by default_setup when a run starts, i.e. when config.yaml beside the log is written
_RUN_START = "Full config saved to "
_TAG = re.compile(r"K(\d+):(.*)$")
POLICIES = ("fixed", "adaptive")
ADAPTIVE_LABEL = " (adaptive, K = longest interval)"


def read_log_results(path, task="sem_seg", dataset=None):
    """{metric: value} of the last evaluation of `task` in a detectron2 log.

    A log holding several datasets' results needs `dataset`. Results logged before the
    last run started are not used: config.yaml (hence K) describes the last run only.
    """
    blocks = []  # (line number, dataset, task, {metric: value})
    last_start = 0
    current_dataset = None
    pending = []  # copypaste lines of the block being read: Task, names, values
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            line = _ANSI.sub("", line.rstrip("\n"))
            if _RUN_START in line:
                last_start = number
                current_dataset = None
                continue
            match = _DATASET.search(line)
            if match:
                current_dataset = match.group(1)
                continue
            match = _COPYPASTE.search(line)
            if not match:
                continue
            text = match.group(1)
            if text.startswith("Task: "):
                pending = [text[len("Task: "):]]
            elif pending:
                pending.append(text)
                if len(pending) == 3:
                    blocks.append((number, current_dataset, *_parse_block(path, number, pending)))
                    pending = []
    blocks = [b for b in blocks if b[2] == task]
    if not blocks:
        raise ValueError(f"{path}: no detectron2 'copypaste:' result for task {task!r}")
    datasets = sorted({b[1] for b in blocks if b[1] is not None})
    if dataset is not None:
        blocks = [b for b in blocks if b[1] == dataset]
        if not blocks:
            raise ValueError(f"{path}: no result for dataset {dataset!r}; the log has {datasets}")
    elif len(datasets) > 1:
        raise ValueError(f"{path}: results for several datasets {datasets}; choose one with --dataset")
    number, _, _, metrics = blocks[-1]
    if number < last_start:
        raise ValueError(
            f"{path}: the run started at line {last_start} logged no result for task {task!r} "
            f"(the last one, line {number}, belongs to an earlier run)"
        )
    return metrics


def _parse_block(path, number, block):
    task, names, values = block
    names = names.split(",")
    values = values.split(",")
    if len(names) != len(values):
        raise ValueError(f"{path}:{number}: {len(names)} metric names but {len(values)} values")
    try:
        return task, {n: float(v) for n, v in zip(names, values)}
    except ValueError:
        raise ValueError(f"{path}:{number}: values are not numbers: {','.join(values)}") from None


def read_json_results(path, task="sem_seg"):
    """(K or None, {metric: value}, key policy) from a JSON file
    {"K": k, task: {metric: value}[, "KEY_POLICY": "fixed" or "adaptive"]}."""
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get(task), dict):
        raise ValueError(f"{path}: expected {{\"K\": <int>, {task!r}: {{metric: value}}}}")
    k = data.get("K")
    if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
        raise ValueError(f"{path}: \"K\" must be a positive integer, got {k!r}")
    return k, data[task], _policy(path, "\"KEY_POLICY\"", data.get("KEY_POLICY", "fixed"))


def read_key_interval(config_path):
    """(MODEL.MPVSS.KEY_INTERVAL or None, MODEL.MPVSS.KEY_POLICY) of a saved detectron2 config."""
    with open(config_path, encoding="utf-8") as f:
        cfg = yaml.safe_load(f) or {}
    mpvss = cfg.get("MODEL", {}).get("MPVSS", {})
    value = mpvss.get("KEY_INTERVAL")
    if value is not None and (not isinstance(value, int) or value < 1):
        raise ValueError(f"{config_path}: MODEL.MPVSS.KEY_INTERVAL must be a positive integer, got {value!r}")
    return value, _policy(config_path, "MODEL.MPVSS.KEY_POLICY", mpvss.get("KEY_POLICY", "fixed"))


def _policy(path, key, value):
    if value not in POLICIES:
        raise ValueError(f"{path}: {key} must be one of {POLICIES}, got {value!r}")
    return value


def load_result(path, k_tag=None, metric="mIoU", task="sem_seg", dataset=None):
    """(K, metric value, key policy) of one evaluation output (log, folder with log.txt, or JSON).

    The policy is "fixed" unless config.yaml or the JSON says "adaptive"."""
    if os.path.isdir(path):
        path = os.path.join(path, "log.txt")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    if path.endswith(".json"):
        k, metrics, policy = read_json_results(path, task)
        source = f"{path} (\"K\")"
    else:
        metrics = read_log_results(path, task, dataset)
        config = os.path.join(os.path.dirname(path), "config.yaml")
        k, policy = read_key_interval(config) if os.path.isfile(config) else (None, "fixed")
        source = config
    if k is None and k_tag is None:
        raise ValueError(
            f"{path}: K unknown; give it as K<k>:{path} (no {source} with the key interval)"
        )
    if k is not None and k_tag is not None and k != k_tag:
        raise ValueError(f"{path}: tag says K={k_tag} but {source} says K={k}")
    if metric not in metrics:
        raise ValueError(f"{path}: no metric {metric!r} for task {task!r}; it has {sorted(metrics)}")
    value = metrics[metric]
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"{path}: {metric} must be a number, got {value!r}")
    return k if k is not None else k_tag, float(value), policy


def parse_run(spec):
    """'NAME=[K<k>:]PATH,...' -> (NAME, [(k or None, PATH), ...])."""
    name, sep, paths = spec.partition("=")
    if not sep or not name.strip() or not paths.strip():
        raise ValueError(f"--runs {spec!r}: expected NAME=[K<k>:]PATH[,[K<k>:]PATH...]")
    items = []
    for item in paths.split(","):
        item = item.strip()
        if not item:
            raise ValueError(f"--runs {spec!r}: empty path")
        match = _TAG.match(item)
        if match and int(match.group(1)) < 1:
            raise ValueError(f"--runs {spec!r}: K must be at least 1 in {item!r}")
        items.append((int(match.group(1)), match.group(2)) if match else (None, item))
    return name.strip(), items


def parse_flops(spec):
    """'KEY=<gflops>,NONKEY=<gflops>' -> (key, nonkey)."""
    values = {}
    for item in spec.split(","):
        name, _, value = item.partition("=")
        try:
            values[name.strip().upper()] = float(value)
        except ValueError:
            raise ValueError(f"--flops {spec!r}: {item!r} is not NAME=<number>") from None
    if sorted(values) != ["KEY", "NONKEY"]:
        raise ValueError(f"--flops {spec!r}: expected KEY=<gflops>,NONKEY=<gflops>")
    return values["KEY"], values["NONKEY"]


def average_gflops(key, nonkey, k):
    """Mean GFLOPs per frame with one key frame in every K frames."""
    return interval_cost({"key": key, "nonkey": nonkey}, "key", k)


def collect(runs, metric="mIoU", task="sem_seg", dataset=None):
    """{variant label: {K: value}} from parsed --runs; one result per K and variant. A variant
    run with the adaptive policy is labelled so (ADAPTIVE_LABEL)."""
    series = {}
    for name, items in runs:
        if name in series or name + ADAPTIVE_LABEL in series:
            raise ValueError(f"--runs: variant {name!r} given twice")
        points, policies = {}, {}
        for k_tag, path in items:
            k, value, policy = load_result(path, k_tag, metric, task, dataset)
            if k in points:
                raise ValueError(f"{path}: variant {name!r} already has a result for K={k}")
            points[k] = value
            policies.setdefault(policy, path)
        if len(policies) > 1:
            raise ValueError(f"--runs: variant {name!r} mixes key-frame policies: {policies['fixed']} is fixed, "
                             f"{policies['adaptive']} adaptive; give them as two variants")
        series[name + (ADAPTIVE_LABEL if "adaptive" in policies else "")] = points
    return series


def format_table(series, metric, flops=None):
    ks = sorted({k for points in series.values() for k in points})
    rows = [[name] + [_cell(points.get(k)) for k in ks] for name, points in series.items()]
    if flops is not None:
        rows.append(["GFLOPs / frame"] + [f"{average_gflops(*flops, k):.2f}" for k in ks])
    return tabulate(rows, headers=[metric] + [f"K={k}" for k in ks], tablefmt="simple", disable_numparse=True)


def _cell(value):
    return "-" if value is None else f"{value:.2f}"


def plot_tradeoff(series, output, metric="mIoU", flops=None, flops_label=None):
    """Writes a PNG: `metric` against K per variant, and mean GFLOPs per frame if `flops`."""
    fig = Figure(figsize=(10 if flops else 5.5, 4.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2 if flops else 1, squeeze=False)[0]
    ks = sorted({k for points in series.values() for k in points})
    ax = axes[0]
    for name, points in series.items():
        k = sorted(points)
        ax.plot(k, [points[i] for i in k], marker="o", label=name)
    ax.set(xlabel="key-frame interval K", ylabel=metric, xticks=ks, title=f"{metric} vs. key-frame interval")
    ax.grid(alpha=0.3)
    ax.legend()
    if flops:
        ax = axes[1]
        ax.plot(ks, [average_gflops(*flops, k) for k in ks], marker="s", color="black",
                label=f"key {flops[0]:g}, non-key {flops[1]:g}")
        ax.set(xlabel="key-frame interval K", ylabel="GFLOPs per frame (mean)", xticks=ks,
               title=flops_label or "mean GFLOPs per frame")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(output, dpi=120)

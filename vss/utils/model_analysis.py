"""Parameters and GFLOPs per frame of a vss model, counted the way the papers count them, and the
table tools/analyze_model.py prints of them.

A video model costs differently on different frames, but has only a few kinds of frames, so
one frame of each kind is counted (`frame_plan`), or every frame of a short video to check
that shortcut.
"""
from collections import Counter

from detectron2.modeling import build_model
from tabulate import tabulate

from .flops import count_frames, count_parameters, frame_plan, interval_cost, plan_mismatches

COUNT_NAMES = {"fvcore": "fvcore", "hooks": "hooks, the TV3S release's counter"}


def analyze(cfg, height, width, counts=("fvcore",), frames=None, intervals=(), progress=False):
    """Parameter counts and per-frame GFLOPs of the model `cfg` builds (random weights).

    frames: None counts one frame of each kind (frame_plan); N counts every frame of an
    N-frame video and reports whether the shortcut holds. intervals: key-frame intervals whose
    mean cost per frame is also given, besides the model's own (key-frame models: MPVSS).
    """
    model = build_model(cfg)
    plan = frame_plan(model)
    if plan.key is not None:
        intervals = sorted(set(intervals) | {len(plan.period)})
    if frames is not None and frames <= max(plan.kinds):
        raise ValueError(f"--frames {frames}: the video must reach frame {max(plan.kinds)} ({plan.summary})")
    params = count_parameters(model)
    result = {
        "height": height,
        "width": width,
        "parameters": params["total"],
        "trainable_parameters": params["trainable"],
        "plan": plan.summary,
        "frames_counted": "every frame" if frames else {str(i): kind for i, kind in plan.kinds.items()},
    }
    for count in counts:
        counted = range(frames) if frames else plan.kinds
        per_frame = count_frames(model, height, width, counted, count, progress)
        result[count] = _summarize(per_frame, plan, intervals)
        if frames:
            result[count]["gflops_of_each_frame"] = [per_frame[i][""] / 1e9 for i in range(frames)]
            result[count]["shortcut_mismatches"] = plan_mismatches(plan, per_frame)
    return result


def _summarize(per_frame, plan, intervals):
    """GFLOPs per frame (the plan's period), by module and by kind of frame."""
    steady = [per_frame[plan.same_as(i)] for i in plan.period]
    mean = sum(steady, Counter())
    # children that run no counted op (e.g. the criterion at test time) are left out; the
    # model's own ops (e.g. Mask2Former's semantic inference) make up the rest
    modules = [name for name in mean if name and any(c[name] for c in per_frame.values())]
    by_module = {name: mean[name] / len(steady) / 1e9 for name in modules}
    by_module["model itself"] = (mean[""] - sum(mean[name] for name in modules)) / len(steady) / 1e9
    out = {
        "gflops_per_frame": mean[""] / len(steady) / 1e9,
        "gflops_per_frame_by_module": by_module,
        "gflops_of_each_kind": {kind: per_frame[i][""] / 1e9 for i, kind in plan.kinds.items()},
    }
    costs = out["gflops_of_each_kind"]
    if plan.key is not None and len(costs) == 2:  # a key frame, then propagated frames up to the next
        out["gflops_per_frame_with_key_interval"] = {str(k): interval_cost(costs, plan.key, k) for k in intervals}
    return out


def format_table(config_file, result):
    """The table of an `analyze` result of `config_file`."""
    rows = [
        ["config", config_file],
        ["input", f"{result['height']}x{result['width']}, zero frames of one video"],
        ["parameters", _count(result["parameters"])],
        ["trainable parameters", _count(result["trainable_parameters"])],
        ["frames counted", "every frame" if result["frames_counted"] == "every frame" else result["plan"]],
    ]
    for count, name in COUNT_NAMES.items():
        if count not in result:
            continue
        r = result[count]
        rows.append([f"GFLOPs / frame ({name})", f"{r['gflops_per_frame']:.2f}"])
        rows += [[f"- {module}", f"{g:.2f}"] for module, g in r["gflops_per_frame_by_module"].items()]
        if len(r["gflops_of_each_kind"]) > 1:
            rows += [[f"  {kind}", f"{g:.2f}"] for kind, g in r["gflops_of_each_kind"].items()]
        for k, g in r.get("gflops_per_frame_with_key_interval", {}).items():
            rows.append([f"  mean, a key frame every {k}", f"{g:.2f}"])
        if "gflops_of_each_frame" in r:
            each = r["gflops_of_each_frame"]
            rows.append(["  each frame", ", ".join(f"{g:.2f}" for g in each)])
            rows.append(["  mean over the frames", f"{sum(each) / len(each):.2f}"])
            mismatches = r["shortcut_mismatches"]
            rows.append(["  shortcut (one frame of each kind)",
                         "holds: every frame costs what its kind's frame costs" if not mismatches else
                         "FAILS: " + ", ".join(f"frame {i} differs from frame {j}" for i, j in mismatches)])
    return tabulate(rows, tablefmt="simple")


def _count(n):
    return f"{n:,} ({n / 1e6:.2f}M)"

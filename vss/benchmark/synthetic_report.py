"""The synthetic benchmark's report: its results (vss.benchmark.synthetic.run) as Markdown tables
and a plot."""
from tabulate import tabulate

from ..engine import METRICS
from ..engine.temporal_contribution import RESET
from ..evaluation.vss_evaluator import CONTEXT_METRICS
from . import per_seed
from .calibration import TARGETS
from .synthetic import KEY_INTERVALS


def columns(result):
    """The metrics of the tables: METRICS, and the context pixels' where the set has them."""
    return [*METRICS, *[m for m in CONTEXT_METRICS if m in result]]


def mpvss_rows(results, per_frame):
    metrics = columns(per_frame)
    rows = [["Mask2Former (per frame)", 1, *[per_frame[m] for m in metrics], per_frame["GFLOPs"], None, None, None]]
    for name, result in results.items():
        epe = result["flow_epe"]
        for k, r in result["K"].items():
            rows.append([name, k, *[r.get(m) for m in metrics], r["GFLOPs"], epe["EPE_objects"], epe["EPE_moving"],
                         epe["EPE"]])
    return rows


def propagation_tables(results):
    """Markdown lines: each variant's propagated frames scored with its own flow and with the true flow,
    per class, and its flow error per class (flow_diagnostics)."""
    classes = list(next(iter(results.values()))["flow_epe"]["EPE_classes"])
    rows, epe_rows = [], []
    for name, result in results.items():
        epe = result["flow_epe"]
        own, true = epe["propagation"]["flow"], epe["propagation"]["true flow"]
        rows.append([name, own["mIoU"], true["mIoU"], *[own[f"IoU-{c}"] for c in classes]])
        epe_rows.append([name, *[epe["EPE_classes"][c] for c in classes]])
    return ["", "Propagated frames (key frames every 10 frames, gaps 1..10): mIoU with the variant's own flow "
            "and with the ground-truth flow (the same key-frame masks), and IoU per class with its own flow:", "",
            tabulate(rows, headers=["model", "mIoU", "mIoU, true flow", *classes], floatfmt=".1f",
                     tablefmt="github", missingval="-"),
            "", "Flow EPE per class of the frame's label (frame pixels, gaps 1..10):", "",
            tabulate(epe_rows, headers=["model", *classes], floatfmt=".2f", tablefmt="github", missingval="-")]


def markdown(res):
    lines = [f"# Synthetic benchmark ({res['options']['data']} set, seed {res['options']['seed']}"
             f"{', --quick' if res['options']['quick'] else ''})", "",
             f"{res['date']}, {res['machine']}; iterations {res['options']['iters']}.", ""]
    if "calibration" in res:
        seed = res["options"]["seed"]
        lines += ["## Calibration (baselines only)", "", calibration_table({seed: res["calibration"]}), ""]
    if "mpvss" in res:
        lines += mpvss_markdown(res)
    if "tv3s" in res:
        lines += tv3s_markdown(res)
    lines += ["", "Stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in res["seconds"].items()), ""]
    return "\n".join(lines)


def calibration_table(runs):
    """Markdown table of the calibration numbers (vss/benchmark/calibration.py) of benchmark runs
    ({seed: numbers}) against their targets (set from VSPW's), as "seed a / seed b"."""
    def target(low, high):
        return f"at most {high}" if low is None else f"{low} to {high}"

    rows = [[name, target(*TARGETS[name]),
             per_seed(numbers.get(name) for numbers in runs.values())]
            for name in TARGETS if any(name in numbers for numbers in runs.values())]
    return tabulate(rows, headers=["number", "target", f"seed {per_seed(map(str, runs))}"], tablefmt="github",
                    disable_numparse=True)


def mpvss_markdown(res):
    data = res["dataset"]
    lines = ["## MPVSS", "",
             f"{data['val_videos']} validation videos of {data['frames']} frames, {data['height']}x{data['width']}. "
             "Flow EPE: per-query flow against the ground truth on the validation videos, gaps 1..10, in "
             "frame pixels, on the pixels of the moving object classes, on every pixel that moves more "
             "than 0.5 px (the camera pans) and on every valid pixel (vss/evaluation/flow_diagnostics.py).", ""]
    headers = ["model", "K", *columns(res["mask2former"]), "GFLOPs/frame", "EPE objects", "EPE moving", "EPE all"]
    lines.append(tabulate(mpvss_rows(res["mpvss"], res["mask2former"]), headers=headers, floatfmt=".2f",
                          tablefmt="github", missingval="-"))
    lines += propagation_tables(res["mpvss"])
    curves = {name: {p["iter"]: p["mIoU"] for p in r.get("curve", [])} for name, r in res["mpvss"].items()}
    curves = {name: c for name, c in curves.items() if c}
    if curves:
        iters = sorted({i for c in curves.values() for i in c})
        lines += ["", "Learning curves of the fine-tuning (mIoU at K = 5, validation set):", "",
                  tabulate([[name, *[c.get(i) for i in iters]] for name, c in curves.items()],
                           headers=["model", *[f"iter {i}" for i in iters]], floatfmt=".1f", tablefmt="github",
                           missingval="-")]
    flow = res["flownets"]
    lines += ["", "## FlowNetS pretraining (pixel flow EPE, frame pixels)", "",
              tabulate([[flow["evaluator"].get("EPE"), flow["evaluator"].get("Fl"), flow["diagnostics"]["EPE"],
                         flow["diagnostics"]["EPE_objects"], flow["diagnostics"]["EPE_moving"],
                         flow["diagnostics"]["EPE_static"], flow["evaluator"].get("EPE_zero")]],
                       headers=["EPE (all pairs)", "Fl %", "EPE (key-frame pairs)", "objects", "moving", "static",
                                "zero flow"], floatfmt=".2f", tablefmt="github", missingval="-"), ""]
    return lines


def tv3s_markdown(res):
    lines = [f"## TV3S against its per-frame SegFormer-B0 ({res['tv3s_dataset']['height']}x"
             f"{res['tv3s_dataset']['width']} frames)", "",
             "Scan resolution: the per-frame SegFormer predicting on TV3S's 1/8 scan map "
             "(vss/evaluation/scan_resolution.py). Fine-tuned as TV3S: the per-frame SegFormer "
             "trained further with TV3S's rates, iterations and frames (the control).", ""]
    seg, tv3s = res["segformer"], res["tv3s"]
    metrics = columns(seg["full resolution"])
    rows = [["SegFormer-B0 (per frame)", *[seg["full resolution"][m] for m in metrics]],
            ["SegFormer-B0 at TV3S's scan resolution", *[seg["scan resolution"].get(m) for m in metrics]],
            ["SegFormer-B0 fine-tuned as TV3S", *[seg["fine-tuned as TV3S"].get(m) for m in metrics]]]
    rows += [[f"TV3S ({mode})", *[r.get(m) for m in metrics]] for mode, r in tv3s.items()]
    lines.append(tabulate(rows, headers=["model", *metrics], floatfmt=".1f", tablefmt="github", missingval="-"))
    if RESET in tv3s:  # older results files have no such row
        stream, reset = tv3s["stream"], tv3s[RESET]
        shown = [m for m in ("mIoU", "mVC8", *CONTEXT_METRICS) if m in stream and m in reset]
        lines += ["", "Temporal contribution (TV3S streamed minus the same weights with the state reset at every "
                  "frame): " + ", ".join(f"{stream[m] - reset[m]:+.1f} {m}" for m in shown) + "."]
    lines += ["", "Learning curves of the fine-tuning (validation set):", ""]
    control = {p["iter"]: p for p in seg["fine-tuned as TV3S"]["curve"]}
    rows = [[p["iter"], p["mIoU"], p["mVC8"], control.get(p["iter"], {}).get("mIoU"),
             control.get(p["iter"], {}).get("mVC8")] for p in tv3s["stream"]["curve"]]
    lines.append(tabulate(rows, headers=["iteration", "TV3S mIoU", "TV3S mVC8", "SegFormer mIoU", "SegFormer mVC8"],
                          floatfmt=".1f", tablefmt="github", missingval="-"))
    return lines


def plot(res, path):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    panels = (2 if "mpvss" in res else 0) + (1 if "tv3s" in res else 0)
    fig, axes = plt.subplots(1, panels, figsize=(5.3 * panels, 4), squeeze=False)
    axes = list(axes[0])
    if "mpvss" in res:
        left, right = axes[:2]
        left.axhline(res["mask2former"]["mIoU"], color="k", linestyle="--", label="Mask2Former (per frame)")
        for name, result in res["mpvss"].items():
            ks = sorted(result["K"], key=int)
            left.plot([int(k) for k in ks], [result["K"][k]["mIoU"] for k in ks], marker="o", label=name)
            gaps = sorted(result["flow_epe"]["gaps"], key=int)
            right.plot([int(g) for g in gaps], [result["flow_epe"]["gaps"][g]["EPE_objects"] for g in gaps],
                       marker="o", label=name)
        gaps = sorted(res["flownets"]["diagnostics"]["gaps"], key=int)
        right.plot([int(g) for g in gaps], [res["flownets"]["diagnostics"]["gaps"][g]["EPE_objects"] for g in gaps],
                   color="k", linestyle=":", label="FlowNetS (pretrained)")
        left.set(xlabel="key-frame interval K", ylabel="mIoU (%)", title="MPVSS variants", xticks=KEY_INTERVALS)
        right.set(xlabel="frames from the key frame", ylabel="EPE on object pixels (px)",
                  title="per-query flow error on moving objects")
    if "tv3s" in res:
        curves = axes[-1]
        for name, curve in (("TV3S (stream)", res["tv3s"]["stream"]["curve"]),
                            ("SegFormer-B0 fine-tuned", res["segformer"]["fine-tuned as TV3S"]["curve"])):
            line, = curves.plot([p["iter"] for p in curve], [p["mIoU"] for p in curve], marker="o",
                                label=f"{name} mIoU")
            curves.plot([p["iter"] for p in curve], [p["mVC8"] for p in curve], marker="s", linestyle="--",
                        color=line.get_color(), label=f"{name} mVC8")
        curves.axhline(res["segformer"]["scan resolution"]["mIoU"], color="k", linestyle=":",
                       label="SegFormer-B0 at the scan resolution, mIoU")
        curves.set(xlabel="fine-tuning iteration", ylabel="%", title="TV3S and its per-frame model")
    for a in axes:
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def tv3s_seeds_table(runs, metrics=("mIoU", "mVC8", *CONTEXT_METRICS)):
    """Markdown table of the TV3S part of benchmark runs on several seeds (`runs`: {seed: results}):
    each model's metric as "seed a / seed b", for the `metrics` the runs have."""
    first = next(iter(runs.values()))
    metrics = [m for m in metrics if m in first["segformer"]["full resolution"]]
    modes = dict.fromkeys(mode for r in runs.values() for mode in r["tv3s"])  # older files lack some
    models = {"SegFormer-B0 (per frame)": lambda r: r["segformer"]["full resolution"],
              "SegFormer-B0 at TV3S's scan resolution": lambda r: r["segformer"]["scan resolution"],
              "SegFormer-B0 fine-tuned as TV3S (control)": lambda r: r["segformer"]["fine-tuned as TV3S"],
              **{f"TV3S ({mode})": (lambda r, mode=mode: r["tv3s"].get(mode, {})) for mode in modes}}
    rows = [[name, *[per_seed(pick(r).get(m) for r in runs.values()) for m in metrics]]
            for name, pick in models.items()]
    seeds = per_seed(map(str, runs))
    return tabulate(rows, headers=["model", *[f"{m}, seed {seeds}" for m in metrics]], tablefmt="github",
                    disable_numparse=True)


def mpvss_summary_table(runs):
    """Markdown table of the MPVSS part of benchmark runs on several seeds (`runs`: {seed: results}): per
    variant the mIoU at each K, the mVC8 (and the context pixels' metrics, where the set has them) at
    K = 5 and the mIoU lost at K = 5 relative to that seed's per-frame Mask2Former, as "seed a / seed
    b"; "-" where a run lacks the variant."""
    first = next(iter(runs.values()))
    at_five = ["mVC8", *[m for m in CONTEXT_METRICS if m in first["mask2former"]]]

    def variant(res, name):
        if name not in res["mpvss"]:
            return [None] * (len(KEY_INTERVALS) + len(at_five) + 1)
        k = {int(key): r for key, r in res["mpvss"][name]["K"].items()}
        loss = 100 * (res["mask2former"]["mIoU"] - k[5]["mIoU"]) / res["mask2former"]["mIoU"]
        return [*[f"{k[i]['mIoU']:.1f}" for i in KEY_INTERVALS], *[f"{k[5][m]:.1f}" for m in at_five], f"{loss:.1f}%"]

    per_frame = [[f"{r['mask2former']['mIoU']:.1f}"] * len(KEY_INTERVALS)
                 + [f"{r['mask2former'][m]:.1f}" for m in at_five] + ["-"] for r in runs.values()]
    rows = [["Mask2Former (per frame)", *[per_seed(c) for c in zip(*per_frame)]]]
    for name in dict.fromkeys(n for r in runs.values() for n in r["mpvss"]):
        rows.append([name, *[per_seed(c) for c in zip(*(variant(r, name) for r in runs.values()))]])
    seeds = per_seed(map(str, runs))
    return tabulate(rows, headers=["model", *[f"mIoU K={i}, seed {seeds}" for i in KEY_INTERVALS],
                                   *[f"{m} K=5, seed {seeds}" for m in at_five], f"mIoU lost at K=5, seed {seeds}"],
                    tablefmt="github", disable_numparse=True)

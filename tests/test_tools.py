import json
import os
import re
import subprocess
import sys

import pytest
import torch
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model
from torch import nn

from vss.benchmark import scan, speed
from vss.engine import setup_cfg
from vss.modeling.mask2former.ms_deform_attn import MSDeformAttn
from vss.modeling.tv3s.scan import selective_scan_ref
from vss.utils.flops import (
    count_frames,
    count_parameters,
    flop_analysis,
    frame_flops,
    frame_plan,
    interval_cost,
    mean_cost,
    plan_mismatches,
    video_flops,
    video_frames,
)
from vss.utils.model_analysis import analyze

from conftest import REPO, load_script

TINY = str(REPO / "configs" / "synthetic" / "mask2former_tiny.yaml")
MPVSS_TINY = str(REPO / "configs" / "synthetic" / "mpvss_query_flow.yaml")
TV3S_TINY = str(REPO / "configs" / "synthetic" / "tv3s_tiny.yaml")


def load_tool(name):
    """A tool's command line (its main) as a module."""
    return load_script(REPO / "tools" / f"{name}.py")


class MatmulNet(nn.Module):
    """conv -> linear -> bmm and baddbmm; the conv runs only on even frames of a video."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 5)
        self.seen = []

    def forward(self, batched_inputs):
        (x,) = batched_inputs
        self.seen.append((x["video_id"], x["frame_idx"], x["height"], x["width"]))
        image = x["image"].float()[None]
        feat = self.conv(image) if x["frame_idx"] % 2 == 0 else image.repeat(1, 2, 1, 1)[:, :4]
        tokens = self.fc(feat.flatten(2).transpose(1, 2))  # (1, HW, 5)
        scores = torch.bmm(tokens, tokens.transpose(1, 2))  # (1, HW, HW)
        bias = torch.zeros(1, tokens.shape[1], 6)
        mixed = torch.baddbmm(bias, tokens, torch.ones(1, 5, 6))
        return [{"scores": scores, "mixed": mixed}]


def test_flops_by_hand_for_conv_linear_bmm_and_baddbmm():
    h, w = 8, 10
    hw = h * w
    conv = hw * 4 * 3 * 3 * 3
    fc = hw * 4 * 5
    bmm = hw * 5 * hw
    baddbmm = hw * 5 * 6  # the product only, the added bias is free like other additions
    model = MatmulNet().eval()
    key, other = video_frames(h, w, 2, video_id="v")
    assert key["image"].shape == (3, h, w) and key["image"].dtype == torch.uint8
    assert flop_analysis(model, key).total() == conv + fc + bmm + baddbmm
    assert flop_analysis(model, other).total() == fc + bmm + baddbmm
    assert model.seen == [("v", 0, h, w), ("v", 1, h, w)]


def test_video_flops_follow_the_frames_and_restore_the_mode():
    model = MatmulNet().train()
    counts = video_flops(model, height=4, width=6, frames=3)
    assert model.training
    assert [c["conv"] for c in counts] == [24 * 4 * 27, 0, 24 * 4 * 27]
    assert [c["fc"] for c in counts] == [24 * 20] * 3
    assert [c[""] for c in counts] == [c["conv"] + 24 * 20 + 24 * 24 * 5 + 24 * 30 for c in counts]
    assert [s[:2] for s in model.seen] == [("flops", 0), ("flops", 1), ("flops", 2)]

    model = MatmulNet().eval()
    video_flops(model, height=4, width=6, frames=1)
    assert not model.training


class DeformOnFrame(nn.Module):
    """One MSDeformAttn layer whose queries and values are the pixels of the frame."""

    def __init__(self, n_heads, n_points):
        super().__init__()
        self.attn = MSDeformAttn(d_model=4, n_levels=1, n_heads=n_heads, n_points=n_points)

    def forward(self, batched_inputs):
        image = batched_inputs[0]["image"].float()[None]  # (1, 4, H, W)
        h, w = image.shape[-2:]
        tokens = image.flatten(2).transpose(1, 2)
        shapes = torch.tensor([[h, w]])
        reference = torch.full((1, h * w, 1, 2), 0.5)
        return self.attn(tokens, reference, tokens, shapes, torch.tensor([0]))


def test_deformable_sampling_counts_four_per_sample_like_upstream_cpu_path():
    # The papers' 110.6G (R50) includes the sampling at fvcore's bilinear rate (4 per
    # sampled value), as upstream's grid_sample path traces; the linears count as usual.
    heads, points, d, lq = 2, 3, 4, 5 * 7
    frame = {"image": torch.zeros(4, 5, 7), "height": 5, "width": 7}
    linears = lq * d * d * 2 + lq * d * heads * points * 3  # value/output proj; offsets (x, y) + weights
    samples = lq * heads * points * (d // heads)
    analysis = flop_analysis(DeformOnFrame(heads, points).eval(), frame)
    assert analysis.by_operator() == {"linear": linears, "grid_sampler": 4 * samples}


class ConvFrozenBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1, bias=False)
        self.norm = FrozenBatchNorm2d(8)

    def forward(self, batched_inputs):
        return self.norm(self.conv(batched_inputs[0]["image"].float()[None]))


def test_frozen_batch_norm_counts_as_in_the_papers():
    # Traced without autograd, detectron2's frozen BN is a batch_norm op (2 FLOPs per value
    # with its affine); with autograd it would be untracked mul/add: R50's 110.56G has it.
    frame = video_frames(4, 5, 1)[0]
    assert flop_analysis(ConvFrozenBN().eval(), frame).by_operator() == {"conv": 20 * 8 * 3, "batch_norm": 2 * 20 * 8}


def test_parameters_include_frozen_batch_norm_affine():
    model = nn.Sequential(nn.Conv2d(3, 8, 1, bias=False), FrozenBatchNorm2d(8), nn.Linear(8, 2))
    model[2].bias.requires_grad_(False)
    assert count_parameters(model) == {"total": 24 + 16 + 18, "trainable": 24 + 16}


def test_video_frames_are_one_video_in_order():
    frames = video_frames(2, 3, 3, video_id="clip", fill=None, seed=1)
    assert [(f["video_id"], f["frame_idx"], f["height"], f["width"]) for f in frames] == [
        ("clip", i, 2, 3) for i in range(3)
    ]
    again = video_frames(2, 3, 3, video_id="clip", fill=None, seed=1)
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(frames, again))
    assert not torch.equal(frames[0]["image"], frames[1]["image"])
    assert all(int(f["image"].max()) == 0 for f in video_frames(2, 3, 2))
    with pytest.raises(ValueError, match="frames=0"):
        video_frames(2, 3, 0)


class Recorder(nn.Module):
    def __init__(self, log, name):
        super().__init__()
        self.log, self.name = log, name

    def forward(self, batched_inputs):
        (x,) = batched_inputs
        self.log.append((self.name, x["video_id"], x["frame_idx"]))
        return [{"sem_seg": x["image"].float()}]


def test_benchmark_warms_up_then_alternates_fresh_videos():
    log = []
    models = {"a": Recorder(log, "a"), "b": Recorder(log, "b")}
    frames = video_frames(2, 2, 3)
    results = speed.benchmark(models, frames, warmup=2, repeats=2)
    expected = [("a", "a/warmup", i) for i in range(2)] + [("b", "b/warmup", i) for i in range(2)]
    for r in range(2):
        expected += [(name, f"{name}/run{r}", i) for name in "ab" for i in range(3)]
    assert log == expected
    assert all(len(results[n]["fps"]) == 2 and min(results[n]["fps"]) > 0 for n in "ab")


HOG = f"""
import time, torch
from vss.benchmark.speed import run_video
from vss.utils.flops import video_frames

class Hog(torch.nn.Module):
    def forward(self, batched_inputs):
        block = torch.ones(16 * 2**20)  # 64 MiB, touched
        time.sleep(0.05)
        return [{{"sem_seg": block[:1]}}]

seconds, peak = run_video(Hog(), video_frames(2, 2, 1), "v", half=False)
print(seconds, peak)
"""


def test_cpu_peak_memory_sees_a_transient_allocation():
    # A fresh process: in this one, freed memory from earlier tests stays resident and
    # would hide the growth the sampler measures.
    out = subprocess.run([sys.executable, "-c", HOG], capture_output=True, text=True, check=True)
    seconds, peak = (float(v) for v in out.stdout.split()[-2:])
    assert seconds >= 0.05
    assert 48 * 2**20 <= peak < 1024 * 2**20


def run_tool(*args):
    # a tool's own folder comes first on its path: PYTHONPATH makes it import this checkout's vss
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_count_frames_runs_the_video_up_to_the_counted_frames():
    for count in ("fvcore", "hooks"):
        model = MatmulNet().train()
        counts = count_frames(model, 4, 6, {2, 1}, count)
        assert [s[:2] for s in model.seen] == [("flops", 0), ("flops", 1), ("flops", 2)]
        assert sorted(counts) == [1, 2] and model.training
        # frame 2 runs the conv, frame 1 does not; the hooks see the conv and the linear only
        fc = 24 * 20 if count == "hooks" else 24 * 20 + 24 * 24 * 5 + 24 * 30
        conv = 24 * 4 * 27 + (24 * 4 if count == "hooks" else 0)  # hooks count the bias adds
        assert counts[1] == {"": fc, "conv": 0, "fc": 24 * 20}
        assert counts[2] == {"": conv + fc, "conv": conv, "fc": 24 * 20}
    with pytest.raises(ValueError, match="unknown FLOP count 'ptflops'; expected one of"):
        count_frames(model, 4, 6, {0}, "ptflops")


def _tiny(config, *opts):
    cfg = setup_cfg(config, [*opts, "MODEL.DEVICE", "cpu"])
    return build_model(cfg), cfg


def test_frame_plans_name_the_kinds_of_frames():
    plan = frame_plan(_tiny(TINY)[0])
    assert plan.kinds == {0: "frame"} and plan.period == (0,) and plan.same_as(7) == 0
    assert "per-frame model" in plan.summary

    plan = frame_plan(_tiny(MPVSS_TINY, "MODEL.MPVSS.KEY_INTERVAL", "3")[0])
    assert plan.kinds == {0: "key frame", 1: "propagated frame"} and plan.period == (0, 1, 2)
    assert [plan.same_as(i) for i in range(7)] == [0, 1, 1, 0, 1, 1, 0]
    assert "K=3" in plan.summary and "adaptive" not in plan.summary
    adaptive = frame_plan(_tiny(MPVSS_TINY, "MODEL.MPVSS.KEY_POLICY", "adaptive")[0])
    assert "adaptive: key frames come at least that often" in adaptive.summary
    assert frame_plan(_tiny(MPVSS_TINY, "MODEL.MPVSS.KEY_INTERVAL", "1")[0]).kinds == {0: "frame"}

    plan = frame_plan(_tiny(TV3S_TINY)[0])
    assert plan.kinds == {1: "streaming step"} and plan.period == (1,)
    assert [plan.same_as(i) for i in range(4)] == [None, 1, 1, 1]
    clip = frame_plan(_tiny(TV3S_TINY, "MODEL.TV3S.INFERENCE", "clip")[0])  # offsets [-3, -2, -1, 0]
    assert clip.kinds == {3: "clip frame"} and [clip.same_as(i) for i in range(5)] == [None, None, None, 3, 3]
    reset = frame_plan(_tiny(TV3S_TINY, "MODEL.TV3S.INFERENCE", "frame")[0])
    assert reset.kinds == {0: "frame"} and reset.start_kinds == {} and [reset.same_as(i) for i in range(3)] == [0, 0, 0]

    class Other(nn.Module):
        temporal = nn.Identity()

    with pytest.raises(ValueError, match="no plan for the temporal head Identity; count every frame"):
        frame_plan(Other())


@pytest.mark.parametrize("config, opts, expected", [
    (MPVSS_TINY, ["MODEL.MPVSS.KEY_INTERVAL", "3"], ["key frame", "propagated frame", "propagated frame"] * 2),
    (MPVSS_TINY, ["MODEL.MPVSS.KEY_INTERVAL", "1"], ["frame"] * 6),
    (TV3S_TINY, ["MODEL.TV3S.NUM_BLOCKS", "1"], ["first frame"] + ["streaming step"] * 5),
    (TV3S_TINY, ["MODEL.TV3S.NUM_BLOCKS", "1", "MODEL.TV3S.INFERENCE", "clip"],  # offsets [-3, -2, -1, 0]
     ["early frame"] * 3 + ["clip frame"] * 3),
    (TV3S_TINY, ["MODEL.TV3S.NUM_BLOCKS", "1", "MODEL.TV3S.INFERENCE", "frame"], ["frame"] * 6),
])
def test_heads_name_the_kind_of_each_frame_they_ran_as_their_plan_says(config, opts, expected):
    model = _tiny(config, *opts)[0].eval()
    plan = frame_plan(model)
    ran = []
    with torch.no_grad():
        for frame in video_frames(32, 32, len(expected)):
            model([frame])
            ran += model.frame_kinds
    assert ran == expected
    # every frame is of the kind of its plan's counted frame, or of the kind of the video's start
    assert ran == [plan.start_kinds[0] if plan.same_as(i) is None else plan.kinds[plan.same_as(i)]
                   for i in range(len(expected))]


def test_plan_mismatches_find_frames_that_break_the_shortcut():
    # MatmulNet's odd frames skip the conv: a "one frame" plan does not hold for it
    model = MatmulNet()
    plan = frame_plan(model)
    per_frame = dict(enumerate(video_flops(model, 4, 6, frames=3)))
    assert plan_mismatches(plan, per_frame) == [(1, 0)]
    assert plan_mismatches(plan, {0: per_frame[0], 2: per_frame[2]}) == []


def test_interval_cost_is_one_key_frame_and_k_minus_1_others():
    costs = {"propagated": 21.24, "key": 110.56}  # the key kind need not come first
    assert interval_cost(costs, "key", 5) == pytest.approx((110.56 + 4 * 21.24) / 5)
    assert interval_cost(costs, "key", 1) == 110.56
    assert interval_cost(costs, "propagated", 2) == mean_cost(costs, {"key": 1, "propagated": 1})
    with pytest.raises(ValueError, match="'key' and one other kind of frame, got \\['key'\\]"):
        interval_cost({"key": 1.0}, "key", 5)
    with pytest.raises(ValueError, match="'key' and one other kind"):
        interval_cost({"key": 1.0, "a": 2.0, "b": 3.0}, "key", 5)


@pytest.mark.slow
@pytest.mark.parametrize("config, opts", [
    (MPVSS_TINY, ["MODEL.MPVSS.KEY_INTERVAL", "2"]),
    (TV3S_TINY, ["MODEL.TV3S.NUM_BLOCKS", "1"]),  # one block: a shorter trace, same frame kinds
])
def test_one_frame_of_each_kind_equals_counting_every_frame(config, opts):
    cfg = setup_cfg(config, [*opts, "MODEL.DEVICE", "cpu"])
    counts = ("fvcore", "hooks")
    shortcut = analyze(cfg, 64, 64, counts, intervals=(1, 2, 4))
    full = analyze(cfg, 64, 64, counts, frames=3, intervals=(1, 2, 4))
    for count in counts:
        each = full[count].pop("gflops_of_each_frame")
        assert full[count].pop("shortcut_mismatches") == []
        assert full[count] == shortcut[count]
        if config == MPVSS_TINY:
            # key, propagated, key
            assert each[0] == each[2] > each[1]
            assert shortcut[count]["gflops_per_frame"] == pytest.approx((each[0] + each[1]) / 2)
            assert shortcut[count]["gflops_per_frame_with_key_interval"]["4"] == pytest.approx(
                (each[0] + 3 * each[1]) / 4)
        else:
            # the first frame starts the states; every later one is the streaming step
            assert each[1] == each[2] == shortcut[count]["gflops_per_frame"]
    assert shortcut["fvcore"]["gflops_per_frame"] > shortcut["hooks"]["gflops_per_frame"]


@pytest.mark.slow
def test_analyze_model_cli_on_tiny_mask2former(tmp_path, capsys):
    out = tmp_path / "flops.json"
    stdout = run_tool("tools/analyze_model.py", "--config-file", TINY, "--height", "64", "--width", "96",
                      "--count", "both", "--json", str(out), "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "5")
    result = json.loads(out.read_text())

    cfg = setup_cfg(TINY, ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "5", "MODEL.DEVICE", "cpu"])
    model = build_model(cfg).eval()
    params = count_parameters(model)
    frame = video_frames(64, 96, 1)[0]
    assert result["parameters"] == params["total"] and result["trainable_parameters"] == params["trainable"]
    assert result["frames_counted"] == {"0": "frame"}
    for count in ("fvcore", "hooks"):
        flops = frame_flops(model, frame, count)
        assert result[count]["gflops_per_frame"] == flops[""] / 1e9
        by_module = result[count]["gflops_per_frame_by_module"]
        assert by_module["backbone"] == flops["backbone"] / 1e9
        assert sum(by_module.values()) == pytest.approx(flops[""] / 1e9)
    assert result["fvcore"]["gflops_per_frame_by_module"]["model itself"] > 0  # semantic inference: einsum
    assert result["hooks"]["gflops_per_frame_by_module"]["model itself"] == 0  # no module: no hook
    assert re.search(rf"parameters\s+{params['total']:,} \(", stdout)
    assert "one frame counted (a per-frame model: every frame costs the same)" in stdout
    assert re.search(rf"GFLOPs / frame \(fvcore\)\s+{result['fvcore']['gflops_per_frame']:.2f}\n", stdout)
    assert re.search(r"GFLOPs / frame \(hooks, the TV3S release's counter\)\s+"
                     rf"{result['hooks']['gflops_per_frame']:.2f}\n", stdout)

    # --frames counts every frame and says whether the shortcut holds
    load_tool("analyze_model").main(["--config-file", TINY, "--height", "64", "--width", "96", "--count", "hooks",
                                     "--frames", "2", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "5"])
    stdout = capsys.readouterr().out
    g = f"{result['hooks']['gflops_per_frame']:.2f}"
    assert re.search(rf"each frame\s+{g}, {g}\n", stdout)
    assert "holds: every frame costs what its kind's frame costs" in stdout


@pytest.mark.slow
def test_benchmark_cli_compares_two_configs():
    stdout = run_tool("tools/benchmark.py", "--config-file", TINY, "--vs", TINY, "--height", "64", "--width", "96",
                      "--frames", "2", "--warmup", "1", "--repeats", "1", "--device", "cpu")
    rows = [line for line in stdout.splitlines() if line.startswith(TINY)]
    assert len(rows) == 2
    fps = [float(row[len(TINY):].split()[0]) for row in rows]
    ratio = re.search(r"speed ratio .+: ([0-9.]+)x frames/s", stdout)
    assert ratio and float(ratio.group(1)) == pytest.approx(fps[0] / fps[1], rel=0.02)


def test_benchmark_quick_default_on_the_cpu(capsys):
    tool = load_tool("benchmark")
    tool.main(["--config-file", TINY, "--height", "32", "--width", "48", "--device", "cpu"])
    out = capsys.readouterr().out
    assert out.startswith("5 frames of 32x48 per run, 1 runs per model, 1 warm-up frames, device cpu")
    assert "(the quick CPU default; --full for 50 frames x 3 runs)" in out
    # --frames given: the note names only the counts the preset gave
    tool.main(["--config-file", TINY, "--height", "32", "--width", "48", "--device", "cpu", "--frames", "2"])
    out = capsys.readouterr().out
    assert out.startswith("2 frames of 32x48 per run, 1 runs per model, 1 warm-up frames")
    assert "(--warmup, --repeats: the quick CPU default; --full for 50 frames x 3 runs)" in out
    # --full with every count given: the given ones win, and no quick-default note
    tool.main(["--config-file", TINY, "--height", "32", "--width", "48", "--device", "cpu", "--full",
               "--frames", "2", "--warmup", "0", "--repeats", "1"])
    out = capsys.readouterr().out
    assert out.startswith("2 frames of 32x48 per run, 1 runs per model, 0 warm-up frames") and "quick" not in out


def test_benchmark_streaming_presets_and_report(tmp_path, capsys):
    tool = load_tool("benchmark_streaming")
    # the presets' windows: 50 frames quick, 100 with --full (checked before a model is built)
    for preset, frames, window in [[], 60, 50], [["--full"], 150, 100]:
        with pytest.raises(SystemExit):
            tool.main(["--config-file", TV3S_TINY, "--frames", str(frames), *preset])
        assert f"--frames ({frames}) must hold two windows of --window ({window}) frames" in capsys.readouterr().err
    out = tmp_path / "stream.json"
    tool.main(["--config-file", TV3S_TINY, "--height", "64", "--width", "64", "--frames", "4", "--window", "2",
               "--warmup", "1", "--clip", "2", "--repeats", "1", "--device", "cpu", "--json", str(out)])
    result = json.loads(out.read_text())
    assert [len(v) for v in result["per_frame"].values()] == [4, 4, 4, 4]
    assert result["summary"]["window"] == 2
    assert (result["clip"]["frames"], result["clip"]["repeats"]) == (2, 1) and result["clip"]["clip_ms_per_frame"] > 0
    # the carried state does not grow: every frame carries the same bytes
    assert len(set(result["per_frame"]["state_bytes"])) == 1 and result["per_frame"]["state_bytes"][0] > 0
    assert "one video of 4 frames of 64x64" in capsys.readouterr().out


def test_benchmark_scan_baselines_compute_the_scan():
    # the timed loops must compute what the scan computes, or the speed-ups mean nothing
    inputs = scan.mamba_inputs(2, 8, 4, 37, "cpu", False)
    y_ref, final_ref = selective_scan_ref(**inputs, delta_softplus=True, return_final_state=True)
    y, final = scan.mamba_reference_loop(**inputs, delta_softplus=True, return_final_state=True)
    assert y_ref.abs().max() > 0.1
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(final, final_ref, rtol=1e-5, atol=1e-6)

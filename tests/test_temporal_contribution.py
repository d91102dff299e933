"""The temporal contribution: a video model evaluated with its state carried and reset at every frame."""
import pytest
import torch

from vss.data.synthetic import generate
from vss.engine import METRICS, learning_curve, setup_cfg, single_frame_opts
from vss.engine.cli import run_main
from vss.engine.temporal_contribution import CONTRIBUTION, RESET

from conftest import REPO, load_script, tiny_opts

SYNTHETIC = REPO / "configs" / "synthetic"
train_net = load_script(REPO / "train_net.py")


def _args(config, *opts):
    return train_net.build_parser().parse_args(["--config-file", str(SYNTHETIC / config), *opts])


def test_heads_declare_their_variant_without_time():
    assert single_frame_opts(setup_cfg(str(SYNTHETIC / "tv3s_tiny.yaml"), [])) == ["MODEL.TV3S.INFERENCE", "frame"]
    assert single_frame_opts(setup_cfg(str(SYNTHETIC / "tv3s_tiny.yaml"), ["MODEL.TV3S.INFERENCE", "clip"])) == [
        "MODEL.TV3S.INFERENCE", "frame"]
    with pytest.raises(ValueError, match=r"applies to MODEL.VIDEO.TEMPORAL_HEAD StateSpaceSharing \(with MODEL.TV3S.INFERENCE "
                                         r"frame\); its temporal head MaskPropagation has none \(MPVSS carries .*"
                                         r"tools/synthetic_benchmark.py scores its propagated frames"):
        single_frame_opts(setup_cfg(str(SYNTHETIC / "mpvss_query_flow.yaml"), []))
    with pytest.raises(ValueError, match="this config builds MaskFormer, which has no temporal state"):
        single_frame_opts(setup_cfg(str(SYNTHETIC / "mask2former_tiny.yaml"), []))
    with pytest.raises(ValueError, match=r"already resets the model's state at every frame \(MODEL.TV3S.INFERENCE "
                                         r"frame\)"):
        single_frame_opts(setup_cfg(str(SYNTHETIC / "tv3s_tiny.yaml"), ["MODEL.TV3S.INFERENCE", "frame"]))


@pytest.mark.parametrize("config, opts, message", [
    ("segformer_tiny.yaml", ["--eval-only"], "this config builds SemanticSegmentor, which has no temporal state"),
    ("mpvss_copy.yaml", ["--eval-only"], "tools/synthetic_benchmark.py scores its propagated frames"),
    ("tv3s_tiny.yaml", [], "--temporal-contribution evaluates trained weights: use it with --eval-only"),
])
def test_train_net_refuses_a_model_without_the_variant_in_one_line(config, opts, message, tmp_path, capsys,
                                                                 monkeypatch):
    monkeypatch.delenv("VSS_DEBUG", raising=False)
    # no weights: the option's error comes first, before any work
    args = _args(config, *opts, "--temporal-contribution", "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path))
    with pytest.raises(SystemExit) as exit_:
        run_main(lambda: train_net.main(args), "train_net.py")
    assert exit_.value.code == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("train_net.py: error: ") and message in last


@pytest.mark.slow
def test_train_net_reports_the_temporal_contribution(tmp_path):
    root = tmp_path / "videos"
    generate(root, train_videos=1, val_videos=1, frames=10, height=32, width=48)
    opts = tiny_opts(root, tmp_path / "tv3s")
    train_net.main(_args("tv3s_tiny.yaml", *opts, "MODEL.WEIGHTS", ""))
    # the training's final evaluation: the saved weights streamed, as configured
    streamed = learning_curve(str(tmp_path / "tv3s"))[-1]
    weights = ["MODEL.WEIGHTS", str(tmp_path / "tv3s" / "model_final.pth")]
    results = train_net.main(_args("tv3s_tiny.yaml", "--eval-only", "--temporal-contribution", *opts, *weights))
    reset = train_net.main(_args("tv3s_tiny.yaml", "--eval-only", *opts, *weights, "MODEL.TV3S.INFERENCE", "frame"))
    assert {m: results["sem_seg"][m] for m in METRICS} == pytest.approx({m: streamed[m] for m in METRICS},
                                                                         nan_ok=True)
    assert results[RESET] == pytest.approx(reset["sem_seg"], nan_ok=True)
    assert results[CONTRIBUTION] == pytest.approx(
        {m: streamed[m] - reset["sem_seg"][m] for m in METRICS}, nan_ok=True)
    assert any(results[CONTRIBUTION][m] != 0 for m in ("mIoU", "mVC8"))  # the carried states changed something
    # the compute report: every frame of the variant one kind, at the cost of a streaming step
    assert reset["sem_seg"]["frames (frame)"] == 10
    assert reset["sem_seg"]["GFLOPs/frame"] == pytest.approx(results["sem_seg"]["GFLOPs/frame"], rel=1e-3)
    log = (tmp_path / "tv3s" / "log.txt").read_text()
    table = log[log.index("Temporal contribution on"):]
    assert "| reset per frame (MODEL.TV3S.INFERENCE frame) |" in table and "| difference " in table
    assert f"{results[CONTRIBUTION]['mIoU']:.2f}" in table.splitlines()[5]

"""FlowNetS pretraining: the multi-scale EPE loss, the meta-architecture's units, and loading
its weights into every MPVSS variant (MODEL.MOTION.WEIGHTS)."""
import pytest
import torch
from detectron2.modeling import build_model
from torch.nn import functional as F

from vss.engine import setup_cfg
from vss.modeling.mpvss.flow_loss import downsample_flow, multiscale_epe
from vss.modeling.mpvss.flownets import FlowNetS
from vss.modeling.mpvss import FLOW_TYPES, FlowEstimator
from vss.modeling.mpvss.motion_weights import load_motion_weights
from conftest import REPO, load_script

PRETRAIN = str(REPO / "configs/synthetic/flownets_pretrain.yaml")
SMALL = dict(num_queries=4, hidden_dim=16, nheads=2, dim_feedforward=32, decoder_layers=3,
             encoder_channels=(8, 8, 16, 16, 16, 32))


# --- loss -------------------------------------------------------------------------------

def test_downsample_flow_averages_valid_vectors_per_cell():
    flow = torch.zeros(1, 2, 2, 4)
    flow[0, 0] = torch.tensor([[1.0, 3.0, 10.0, 20.0], [5.0, 7.0, 30.0, 40.0]])
    valid = torch.tensor([[[True, True, False, False], [True, False, False, True]]])
    scaled, share = downsample_flow(flow, valid, 2, (1, 2))
    # left cell: (1 + 3 + 5) / 3 valid pixels; right cell: only 40 is valid
    assert torch.allclose(scaled[0, 0], torch.tensor([[3.0, 40.0]]))
    assert torch.allclose(share, torch.tensor([[[0.75, 0.25]]]))
    # cells reaching past the map count the missing pixels as invalid
    scaled, share = downsample_flow(flow, valid, 4, (1, 1))
    assert torch.allclose(scaled[0, 0], torch.tensor([[(1 + 3 + 5 + 40) / 4]]))
    assert torch.allclose(share, torch.tensor([[[4 / 16]]]))
    with pytest.raises(ValueError, match="does not give the 2x2 output grid"):
        downsample_flow(flow, valid, 2, (2, 2))


def test_multiscale_epe_hand_computed():
    target = torch.zeros(1, 2, 4, 4)
    target[0, 0], target[0, 1] = 3.0, 4.0  # |(3, 4)| = 5 everywhere
    valid = torch.ones(1, 4, 4, dtype=torch.bool)
    valid[0, :2, :2] = False  # the top-left cell of level 0 has no ground truth
    flows = [torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 1, 1)]
    flows[1][0, 0] = 3.0  # level 1: off by (0, 4) on 12 valid pixels of 16
    terms = multiscale_epe(flows, target, valid, weights=(0.5, 2.0), cell=2)
    assert terms[0].item() == pytest.approx(0.5 * 3 * 5)  # 3 valid cells of EPE 5
    assert terms[1].item() == pytest.approx(2.0 * 0.75 * 4)


def test_multiscale_epe_is_flownets_loss_when_all_pixels_are_valid():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(3, 2, 16, 32, generator=g)
    flows = [torch.randn(3, 2, 16 // 2**i, 32 // 2**i, generator=g) for i in range(1, 4)]
    weights = (0.005, 0.01, 0.02)
    terms = multiscale_epe(flows, target, torch.ones(3, 16, 32, dtype=torch.bool), weights, cell=2)
    for flow, weight, term in zip(flows, weights, terms):
        # FlowNetPytorch: area-interpolated target, EPE summed over pixels / batch size
        scaled = F.interpolate(target, flow.shape[-2:], mode="area")
        expected = weight * torch.linalg.vector_norm(flow - scaled, dim=1).sum() / 3
        assert term.item() == pytest.approx(expected.item(), rel=1e-5)


def test_multiscale_epe_gradients_skip_invalid_cells():
    flows = [torch.zeros(1, 2, 2, 2, requires_grad=True)]
    target = torch.ones(1, 2, 4, 4)
    valid = torch.ones(1, 4, 4, dtype=torch.bool)
    valid[0, 2:, 2:] = False
    multiscale_epe(flows, target, valid, (1.0,), cell=2)[0].backward()
    grad = flows[0].grad[0].abs().sum(0)
    assert grad[1, 1] == 0 and (grad.flatten()[:3] > 0).all()


def test_multiscale_epe_rejects_bad_inputs():
    with pytest.raises(ValueError, match="2 flow levels but 1 loss weights"):
        multiscale_epe([torch.zeros(1, 2, 1, 1)] * 2, torch.zeros(1, 2, 2, 2), torch.ones(1, 2, 2, dtype=torch.bool),
                       (1.0,), 2)
    with pytest.raises(ValueError, match=r"target must be \(B, 2, H, W\)"):
        multiscale_epe([torch.zeros(1, 2, 1, 1)], torch.zeros(1, 3, 2, 2), torch.ones(1, 2, 2, dtype=torch.bool),
                       (1.0,), 2)


# --- meta-architecture ------------------------------------------------------------------

def small_flownets(**kwargs):
    torch.manual_seed(0)
    return FlowNetS(flow=FlowEstimator(flow_type="pixel", **SMALL), **kwargs)


def pair(height=64, width=96, flow=(0.0, 0.0), seed=0):
    g = torch.Generator().manual_seed(seed)
    image, key = (torch.rand(2, 3, height, width, generator=g) * 255).to(torch.uint8)
    target = torch.tensor(flow).view(2, 1, 1).expand(2, height, width).clone()
    return {"image": image, "key_image": key, "flow": target, "flow_valid": torch.ones(height, width, dtype=torch.bool)}


def constant_levels(model, values):
    """Make the decoder predict `values[i]` (grid pixels, dx = dy) at level i."""
    def pixel_flow(feats, all_levels=False):
        flows = [torch.full((f.shape[0], 2, *f.shape[-2:]), v) for f, v in zip(feats, values)]
        return flows if all_levels else flows[0]
    model.flow.decoder.pixel_flow = pixel_flow


def test_loss_compares_flows_in_flownets_units():
    model = small_flownets(loss_weights=(1.0, 0.0, 0.0, 0.0, 2.0), div_flow=20.0).train()
    # 64x96 frame -> flow grid 8x12 (8 frame pixels per cell), level 6 1x1 (cells of 128 pixels)
    constant_levels(model, [1.0, 0.0, 0.0, 0.0, 0.5])
    losses = model([pair(flow=(16.0, 16.0))] * 2)
    assert sorted(losses) == [f"loss_flow{k}" for k in range(2, 7)]
    # frame pixels -> FlowNet units: x 0.5 (input scale) / 20; grid pixels: x 8 frame pixels first.
    # level 2: |(8 - 16, 8 - 16)| frame px on 96 cells; level 6: |(4 - 16) * sqrt 2| on 64*96/128^2 of a cell
    unit = 0.5 / 20
    assert losses["loss_flow2"].item() == pytest.approx(96 * 8 * 2**0.5 * unit, rel=1e-5)
    assert losses["loss_flow6"].item() == pytest.approx(2 * (64 * 96 / 128**2) * 12 * 2**0.5 * unit, rel=1e-5)
    assert losses["loss_flow3"].item() == 0


def test_inference_returns_frame_pixels_at_the_output_size():
    model = small_flownets().eval()
    constant_levels(model, [1.0, 0.0, 0.0, 0.0, 0.0])
    with torch.no_grad():
        same, double = model([pair(60, 90), dict(pair(60, 90), height=120, width=180)])
    # 60x90 pads to 64x96: one grid pixel is 8 frame pixels, 16 at twice the size
    assert same["flow"].shape == (2, 60, 90) and torch.allclose(same["flow"], torch.tensor(8.0))
    assert double["flow"].shape == (2, 120, 180) and torch.allclose(double["flow"], torch.tensor(16.0))


def test_training_reaches_every_parameter():
    model = small_flownets().train()
    sum(model([pair(flow=(3.0, -2.0)), pair(seed=1)]).values()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing


def test_flownets_checks():
    with pytest.raises(ValueError, match="trains the 'pixel' flow"):
        FlowNetS(flow=FlowEstimator(flow_type="query", **SMALL))
    with pytest.raises(ValueError, match="LOSS_WEIGHTS needs 5 weights"):
        small_flownets(loss_weights=(1.0,))
    model = small_flownets().train()
    with pytest.raises(ValueError, match="needs 'key_image' in every input"):
        model([{"image": torch.zeros(3, 32, 32, dtype=torch.uint8), "file_name": "a.jpg"}])


def test_config_builds_flownets_with_the_synthetic_mpvss_encoder():
    cfg = setup_cfg(PRETRAIN, ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    assert isinstance(model, FlowNetS) and model.flow.flow_type == "pixel"
    mpvss = setup_cfg(str(REPO / "configs/synthetic/mpvss_query_flow.yaml"))
    assert cfg.MODEL.MOTION.ENCODER_CHANNELS == mpvss.MODEL.MOTION.ENCODER_CHANNELS


# --- motion weights into MPVSS ----------------------------------------------------------

@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A FlowNetS checkpoint of the synthetic size with random (non-init) weights."""
    model = build_model(setup_cfg(PRETRAIN, ["MODEL.DEVICE", "cpu"]))
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    path = tmp_path_factory.mktemp("flownets") / "model_final.pth"
    torch.save({"model": model.state_dict(), "iteration": 9}, path)
    return path, {k[len("flow."):]: v for k, v in model.state_dict().items()}


VARIANTS = {"query": "mpvss_query_flow", "pixel": "mpvss_optical_flow", "query_learned": "mpvss_query_learned",
            "query_random": "mpvss_query_random", "query_for_pf": "mpvss_query_for_pf"}


@pytest.mark.parametrize("flow_type", FLOW_TYPES)
def test_motion_weights_load_into_every_variant(flow_type, pretrained, caplog):
    path, source = pretrained
    cfg = setup_cfg(str(REPO / f"configs/synthetic/{VARIANTS[flow_type]}.yaml"), ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    assert model.temporal.flow.flow_type == flow_type
    before = {k: v.clone() for k, v in model.temporal.flow.state_dict().items()}
    with caplog.at_level("INFO", logger="vss.modeling.mpvss.motion_weights"):
        report = load_motion_weights(model, str(path))
    after = model.temporal.flow.state_dict()
    agree = {k for k, v in before.items() if k in source and source[k].shape == v.shape}
    assert set(report["loaded"]) == agree
    assert {k for k in before if k.startswith("encoder.")} <= agree  # the whole encoder
    for k in before:
        assert torch.equal(after[k], source[k] if k in agree else before[k]), k
    if flow_type == "pixel":  # the same network: everything loads
        assert not report["kept"] and not report["unused"]
    else:  # the query-refined decoder is narrower (or absent): FlowNetS's coarse levels do not fit
        assert "decoder.deconv5.conv.weight" not in report["loaded"]
    assert "Motion weights from" in caplog.text and "into temporal.flow" in caplog.text
    assert f"loaded {len(agree)} of {len(before)} tensors" in caplog.text
    if flow_type in ("query", "query_for_pf"):
        assert "decoder.predict_flow4 (shape differs)" in caplog.text


def test_motion_weights_errors(pretrained, tmp_path):
    path, _ = pretrained
    copy = build_model(setup_cfg(str(REPO / "configs/synthetic/mpvss_copy.yaml"), ["MODEL.DEVICE", "cpu"]))
    with pytest.raises(ValueError, match="has no flow module"):
        load_motion_weights(copy, str(path))
    assert load_motion_weights(copy, "") is None
    wider = FlowEstimator(flow_type="pixel", **dict(SMALL, encoder_channels=(16, 32, 64, 64, 64, 256)))
    with pytest.raises(ValueError, match=r"motion encoder does not match \(encoder.conv6.0.conv.weight"):
        load_motion_weights(wider, str(path))
    other = tmp_path / "other.pth"
    torch.save({"model": {"backbone.x": torch.zeros(1)}}, other)
    with pytest.raises(ValueError, match="has no flow-module tensors"):
        load_motion_weights(wider, str(other))


# --- through the trainer and train_net.py -----------------------------------------------

@pytest.mark.slow
def test_pretraining_on_synthetic_pairs_through_the_trainer(tmp_path):
    """A tiny run on generated videos' exact flow: the loss falls, the evaluation and
    train_net.py --eval-only with MODEL.MOTION.WEIGHTS give the same numbers."""
    import uuid

    from vss.data.datasets import register_flow_pairs
    from vss.data.synthetic import generate
    from vss.engine import Trainer

    root = str(tmp_path / "synthetic_vss")
    generate(root, train_videos=2, val_videos=1, frames=6, height=64, width=96)
    names = [f"flow_{split}_{uuid.uuid4().hex[:8]}" for split in ("train", "val")]
    register_flow_pairs(names[0], root, "train", 3, both_directions=True)
    register_flow_pairs(names[1], root, "val", 3, both_directions=False)
    opts = ["MODEL.DEVICE", "cpu", "DATASETS.TRAIN", f"('{names[0]}',)", "DATASETS.TEST", f"('{names[1]}',)",
            "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.CROP.SIZE", "(64, 96)", "INPUT.MIN_SIZE_TEST", "64",
            "SOLVER.IMS_PER_BATCH", "4", "SOLVER.MAX_ITER", "40", "SOLVER.STEPS", "()", "SOLVER.BASE_LR", "0.001",
            "SOLVER.WARMUP_ITERS", "0", "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(tmp_path / "out")]
    torch.manual_seed(0)
    trainer = Trainer(setup_cfg(PRETRAIN, opts))
    trainer.resume_or_load(resume=False)
    trainer.train()
    results = Trainer.test(trainer.cfg, trainer.model)["flow"]
    losses = trainer.storage.history("total_loss").values()
    first, last = sum(v for v, _ in losses[:8]) / 8, sum(v for v, _ in losses[-8:]) / 8
    assert last < 0.8 * first
    assert {"EPE", "Fl", "EPE_zero", "EPE_gap1", "EPE_gap3"} <= set(results) and "EPE_gap-1" not in results

    train_net = load_script(REPO / "train_net.py")
    weights = str(tmp_path / "out" / "model_final.pth")
    args = train_net.build_parser().parse_args(
        ["--config-file", PRETRAIN, "--eval-only", *opts, "OUTPUT_DIR", str(tmp_path / "eval"),
         "MODEL.MOTION.WEIGHTS", weights])
    again = train_net.main(args)["flow"]
    assert again == pytest.approx(results)

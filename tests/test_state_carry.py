"""The state-carry diagnostic: how much of its carried scan state a streaming TV3S uses."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from vss.data.synthetic import generate
from vss.engine.cli import run_main
from vss.engine.runs import load_model
from vss.evaluation.clip_gradient import clip_gradient
from vss.evaluation.state_carry import FRACTIONS, recording, retained, state_carry
from vss.modeling.tv3s import MambaBlock, MambaState

from conftest import REPO, load_script, tiny_opts

SYNTHETIC = REPO / "configs" / "synthetic"
tool = load_script(REPO / "tools" / "tv3s_state_carry.py")


def retained_by_hand(m, u, conv_state):
    """R after every token, token by token: the product of the per-token decays exp(step * A)."""
    x = m.in_proj(u).chunk(2, dim=-1)[0]  # (W, L, d_inner)
    padded = torch.cat([conv_state.transpose(1, 2), x], dim=1)
    w, k = m.conv1d.weight[:, 0], m.d_conv
    x = F.silu(torch.stack([(padded[:, t:t + k] * w.t()).sum(1) for t in range(u.shape[1])], 1) + m.conv1d.bias)
    steps = F.softplus(m.dt_proj(m.x_proj(x)[..., :m.dt_rank]))  # (W, L, d_inner)
    r, out = torch.ones(u.shape[0], m.d_inner, m.d_state), []
    for t in range(u.shape[1]):
        r = r * torch.exp(steps[:, t, :, None] * -m.A_log.exp())
        out.append(r)
    return out


def test_retained_is_the_carried_states_weight_computed_by_hand_and_through_the_hook():
    torch.manual_seed(0)
    block = MambaBlock(16, d_state=4).eval()
    m = block.mixer
    first, second = torch.randn(3, 5, 16), torch.randn(3, 8, 16)
    with torch.no_grad(), recording([block]) as calls:
        _, _, state = block(first)
        assert not calls  # the sequence's start carries nothing
        out, _, _ = block(second, None, state)
    assert block.mixer._forward_hooks == {}  # removed on exit
    with torch.no_grad():
        u = block.norm(second)
        hand = retained_by_hand(m, u, state.conv_state)
        # the meaning of R: the final states from the carried state and from a zeroed one differ by R * state
        zeroed = MambaState(state.conv_state, torch.zeros_like(state.ssm_state))
        ends = [m(u[:, :k], state)[1].ssm_state - m(u[:, :k], zeroed)[1].ssm_state for k in (2, 4, 6, 8)]
        fresh = m.forward(u)[0]
    (r, changed, total, tokens), = calls[0]
    assert r.shape == (len(FRACTIONS), 3, 32, 4) and tokens == 8
    for k, (end, got) in enumerate(zip(ends, r)):  # FRACTIONS of 8 tokens: after 2, 4, 6, 8
        assert torch.allclose(got, hand[2 * k + 1], atol=1e-6)
        assert torch.allclose(end, got * state.ssm_state, atol=1e-5)
    assert 0.01 < r[-1].median() < 0.99 and (r[0] > r[-1]).all()  # a state that decays within the frame
    assert torch.allclose(retained(m, u, state), r)
    assert changed == pytest.approx((out - fresh).square().sum().item(), rel=1e-5)
    assert total == pytest.approx(out.square().sum().item(), rel=1e-5)


@pytest.fixture(scope="module")
def tiny_tv3s(tmp_path_factory):
    """(cfg, tv3s_tiny.yaml's model with random weights, its test set of 2 videos of 3 32x48 frames)."""
    tmp = tmp_path_factory.mktemp("state_carry")
    generate(tmp / "videos", train_videos=1, val_videos=2, frames=3, height=32, width=48)
    opts = tiny_opts(tmp / "videos", tmp / "out")
    torch.manual_seed(0)
    cfg, model = load_model(str(SYNTHETIC / "tv3s_tiny.yaml"), "", opts)
    return cfg, model, opts


def with_a_log(model, value):
    for layer in model.temporal.vs.layers:
        layer.mixer.A_log.fill_(value)


def test_fast_decay_forgets_the_state_and_no_decay_keeps_it(tiny_tv3s):
    cfg, model, _ = tiny_tv3s
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        with torch.no_grad():
            with_a_log(model, 20.0)  # A = -5e8: every token's step wipes the state
            for layer in model.temporal.vs.layers:
                layer.mixer.conv1d.weight[..., :-1] = 0  # the conv sees the current token only: no conv state
        fast = state_carry(cfg, model, cfg.DATASETS.TEST[0])
        with torch.no_grad():
            with_a_log(model, -20.0)  # A = -2e-9: nothing decays
        kept = state_carry(cfg, model, cfg.DATASETS.TEST[0])
    finally:
        model.load_state_dict(saved)
    assert fast["frames"] == kept["frames"] == 4 and fast["videos"] == 2  # 2 videos, all frames but the first
    assert len(fast["layers"]) == 8 and [layer["shifted"] for layer in fast["layers"]] == [False, True] * 4
    for layer in fast["layers"]:
        assert max(layer["median"]) < 1e-6 and max(layer["> 0.01"]) == 0
        assert layer["output share"] < 1e-5
        assert layer["A_log moved"] == pytest.approx(20.0)  # from log(1) = 0
    for layer, mamba in zip(kept["layers"], (layer.mixer for layer in model.temporal.vs.layers)):
        assert layer["A_log moved"] == pytest.approx(20.0 + math.log(16))  # from log(16), the last state's
        steps = sorted(torch.nn.functional.softplus(mamba.dt_proj.bias).tolist())
        p10, p50, p90 = layer["step percentiles"]
        assert steps[0] <= p10 < p50 < p90 <= steps[-1] and 1e-3 <= p50 <= 0.1  # the init's range
    for layer in kept["layers"]:
        assert min(layer["median"]) > 0.999 and min(layer["> 0.5"]) == 1
        assert layer["output share"] > 1e-3
    default = state_carry(cfg, model, cfg.DATASETS.TEST[0], videos=1)
    assert default["frames"] == 2 and default["layers"][0]["tokens per frame"] == [16]
    assert 0 < default["layers"][0]["median"][-1] < default["layers"][0]["median"][0] < 1


def test_tool_prints_a_row_per_layer_and_writes_the_json(tiny_tv3s, tmp_path, capsys):
    cfg, model, opts = tiny_tv3s
    path = tmp_path / "carry.json"
    torch.manual_seed(0)  # the fixture's random weights
    result = tool.main(["--config-file", str(SYNTHETIC / "tv3s_tiny.yaml"), "--videos", "1", "--clips", "2",
                        "--json", str(path), *opts])
    assert json.loads(path.read_text()) == result
    assert result["dataset"] == cfg.DATASETS.TEST[0] and result["frames"] == 2
    assert result["layers"] == state_carry(cfg, model, cfg.DATASETS.TEST[0], videos=1)["layers"]
    assert result["clip gradient"] == clip_gradient(cfg, model, cfg.DATASETS.TEST[0], clips=2)
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "layer" not in line]
    assert len(rows) == 8 and rows[1].startswith("| 1 (shifted) ")
    shares = " / ".join(f"{share:.3f}" for share in result["clip gradient"]["gradient share"])
    assert f"mean over 2 training clips: {shares}" in out


@pytest.mark.parametrize("config, message", [
    ("segformer_tiny.yaml", "the config builds SemanticSegmentor; the state-carry diagnostic measures TV3S"),
    ("mpvss_copy.yaml", "the config builds VideoSegmentor with temporal head MaskPropagation;"),
])
def test_tool_refuses_a_model_other_than_tv3s_in_one_line(config, message, capsys, monkeypatch):
    monkeypatch.delenv("VSS_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_:
        run_main(lambda: tool.main(["--config-file", str(SYNTHETIC / config), "MODEL.DEVICE", "cpu"]),
                 "tv3s_state_carry.py")
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith(f"tv3s_state_carry.py: error: {message}")


def test_clip_gradient_reaches_earlier_frames_only_through_the_state(tiny_tv3s):
    cfg, model, _ = tiny_tv3s
    cfg = cfg.clone()
    cfg.defrost()
    cfg.INPUT.VIDEO.CLIP_OFFSETS = [-2, -1, 0]
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        default = clip_gradient(cfg, model, cfg.DATASETS.TEST[0], clips=3)
        with torch.no_grad():
            with_a_log(model, 20.0)  # every token's step wipes the scan state
            for layer in model.temporal.vs.layers:
                layer.mixer.conv1d.weight[..., :-1] = 0  # and the conv sees the current token only
        cut = clip_gradient(cfg, model, cfg.DATASETS.TEST[0], clips=3)
    finally:
        model.load_state_dict(saved)
    assert default["offsets"] == [-2, -1, 0] and default["clips"] == 3
    assert default["gradient share"][-1] == cut["gradient share"][-1] == 1.0
    assert all(0 < share < 1 for share in default["gradient share"][:-1])
    assert all(share < 1e-6 for share in cut["gradient share"][:-1])
    assert all(p.grad is None for p in model.parameters())
    # the same draws give the same numbers
    assert clip_gradient(cfg, model, cfg.DATASETS.TEST[0], clips=3) == default

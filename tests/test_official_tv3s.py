"""Parity with the official TV3S release (Ashesham/TV3S 4951815), against outputs its own code
produced (tests/data/official/README.md says how; the official code is not needed here).

- forward: the small decode head on fixed MiT-B1-shaped features (tv3s_head_official.pt);
- one training step of the head in train mode: both losses and every parameter's gradient
  (tv3s_train_step.pt);
- one optimizer step of the whole model, MiT-B1 + the same head: every parameter's lr and
  weight decay as mmcv's constructor assigned them from the release config, and the parameters
  after one AdamW step (tv3s_optim_step.pt).

Our model is built from configs/vspw/tv3s/MiT-B1.yaml with only the head made small (and
every dropout / drop path at 0, as the fixtures were made), so the VSPW config's defaults are
what is compared to the release's recipe.
"""
import pytest
import torch
from detectron2.modeling import build_model

from vss.conversion import tv3s as convert_tv3s
from vss.engine import setup_cfg
from vss.engine.optimizer import build_optimizer

from conftest import DATA, REPO, load_script

FIXTURES = DATA / "official"
REL = 1e-5
# Adam's first step is ~lr x sign(gradient): an element whose gradient is within that rounding
# error of 0 may step the other way. Up to this many such elements per tensor are accepted.
FLIPS = 4
LEVELS = {"res2": "c1", "res3": "c2", "res4": "c3", "res5": "c4"}

# the generator's weight recipe (the script imports no official code at module level)
generator = load_script(FIXTURES / "generate" / "tv3s_train_step.py")


def load_fixture(name):
    return torch.load(FIXTURES / name, map_location="cpu", weights_only=True)


def small_cfg(s, *opts):
    return setup_cfg(str(REPO / "configs" / "vspw" / "tv3s" / "MiT-B1.yaml"), [
        "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
        "MODEL.SEM_SEG_HEAD.EMBED_DIM", s["embed_dim"], "MODEL.SEM_SEG_HEAD.NUM_CLASSES", s["num_classes"],
        "MODEL.TV3S.WINDOW_SIZE", s["window_size"], "MODEL.TV3S.SHIFT", s["shift"],
        "MODEL.TV3S.NUM_BLOCKS", s["num_blocks"], "MODEL.TV3S.D_STATE", s["d_state"],
        "MODEL.TV3S.D_CONV", s["d_conv"], "MODEL.TV3S.EXPAND", s["expand"], *opts,
    ])


def no_dropout_cfg(s):
    """The fixtures ran with every dropout and drop path at 0 (train mode made deterministic)."""
    return small_cfg(s, "MODEL.TV3S.DROPOUT", 0.0, "MODEL.TV3S.DROP_PATH", 0.0, "MODEL.MIT.DROP_PATH_RATE", 0.0)


def build_train_model(cfg):
    torch.manual_seed(0)
    model = build_model(cfg)
    model.sem_seg_head.dropout.p = 0.0  # the per-frame head's Dropout2d has no config key
    return model


def train_mode_float64(model):
    """The training fixtures ran in float64: in float32 the gradients' own rounding error (5e-5
    to 2e-4 relative, measured) exceeds the tolerance."""
    return model.double().train()


def official_names(ours):
    """{our name: official name} for our parameter names (KEY_MAP read backwards)."""
    out = {}
    for name in ours:
        row = next((old, new) for old, new in convert_tv3s.KEY_MAP if new is not None and name.startswith(new))
        out[name] = row[0] + name[len(row[1]):]
    return out


def rel_diff(ours, ref):
    return float((ours - ref).abs().max() / ref.abs().max())


def parse_shapes(text):
    rows = (line.split("\t") for line in text.split("\n"))
    return {name: tuple(int(x) for x in shape.split(",") if x) for name, shape in rows}


def clip_batch(frames, labels):
    """(B, T, 3, H, W) uint8 frames and (B, T, H, W) labels -> clip dicts, frames in clip order."""
    return [{"images": list(clip), "sem_segs": [lab.long() for lab in labs], "file_name": f"clip{i}"}
            for i, (clip, labs) in enumerate(zip(frames, labels))]


# ---- forward: tv3s_head_official.pt ------------------------------------------------------------

@pytest.fixture(scope="module")
def forward_outputs():
    fx = load_fixture("tv3s_head_official.pt")
    s = fx["settings"]
    cfg = small_cfg(s)
    expected = {k: v for k, v in convert_tv3s.model_keys(cfg).items() if not k.startswith("backbone.")}
    weights = convert_tv3s.convert(fx["state_dict"], convert_tv3s.KEY_MAP, expected, source="tv3s_head_official.pt")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert unexpected == [] and all(k.startswith("backbone.") for k in missing)
    feats = [fx["features"][c] for c in LEVELS.values()]
    t, tv = s["num_clips"], model.temporal
    out = {}
    with torch.no_grad():
        fused = model.sem_seg_head.forward_features(dict(zip(LEVELS, feats)))
        y, _ = tv.vs(tv.mamba_input(fused, t))
        out["fused"], out["mamba_last"] = fused, y[:, -1]
        out["logits"] = tv.classify(y[:, -1], fused.shape[-2:])
        y_reversed, _ = tv.vs(tv.mamba_input(fused, t).flip(1))
        out["reversed_logits"] = tv.classify(y_reversed[:, -1], fused.shape[-2:])
        states, stream = None, []
        for i in range(t):  # clip 0 streamed one frame per call, as the release's --mode 2
            fused_i = model.sem_seg_head.forward_features(dict(zip(LEVELS, [x[i:i + 1] for x in feats])))
            y_i, states = tv.vs(tv.mamba_input(fused_i, 1), states)
            stream.append(tv.classify(y_i[:, -1], fused_i.shape[-2:]))
        out["stream_logits"] = torch.cat(stream)
    return fx, out


@pytest.mark.parametrize("key", ["fused", "mamba_last", "logits", "stream_logits"])
def test_forward_equals_the_release(forward_outputs, key):
    """The fused map (linear_fuse), the Mamba output of the last frame, the clip's logits
    (B=2, T=3) and the logits streamed frame by frame (vs the release's `--mode 2`)."""
    fx, ours = forward_outputs
    assert ours[key].shape == fx[key].shape
    assert rel_diff(ours[key], fx[key]) <= REL


def test_forward_comparison_sees_the_frame_order(forward_outputs):
    """The comparison can fail: our logits of the clips with their frames reversed are far from
    the release's."""
    fx, ours = forward_outputs
    assert rel_diff(ours["reversed_logits"], fx["logits"]) > 1000 * REL


# ---- one training step of the head: tv3s_train_step.pt ----------------------------------------

@pytest.fixture(scope="module")
def train_step():
    fx = load_fixture("tv3s_train_step.pt")
    s = fx["settings"]
    cfg = no_dropout_cfg(s)
    model = build_train_model(cfg)
    expected = {k: v for k, v in convert_tv3s.model_keys(cfg).items() if not k.startswith("backbone.")}
    weights = convert_tv3s.convert(fx["state_dict"], convert_tv3s.KEY_MAP, expected, source="tv3s_train_step.pt")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert unexpected == [] and all(k.startswith("backbone.") for k in missing)
    train_mode_float64(model)
    feats = {ours: fx["features"][c].double() for ours, c in LEVELS.items()}
    model.backbone.forward = lambda images: feats  # the fixture's features in place of MiT's
    b, t, h, w = s["batch_size"], s["num_clips"], s["height"], s["width"]
    losses = model(clip_batch(torch.zeros(b, t, 3, h, w, dtype=torch.uint8), fx["labels"]))
    sum(losses.values()).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if not n.startswith("backbone.")}
    return fx, model, losses, grads


def test_train_step_losses_equal_the_release(train_step):
    """The release logs one `decode.loss_seg` = 0.5 x CE(per-frame logits, every frame) +
    1.0 x CE(temporal logits of the last frame, its labels), each CE mmseg 0.11's mean."""
    fx, _, losses, _ = train_step
    assert set(losses) == {"loss_sem_seg_aux", "loss_sem_seg"}
    assert losses["loss_sem_seg_aux"].item() == pytest.approx(0.5 * fx["per_frame_ce"], rel=REL)
    assert losses["loss_sem_seg"].item() == pytest.approx(fx["temporal_ce"], rel=REL)
    assert sum(losses.values()).item() == pytest.approx(fx["losses"]["decode.loss_seg"], rel=REL)


def test_train_step_gradient_of_every_head_parameter_equals_the_release(train_step):
    """Every parameter of the per-frame head (sem_seg_head) and the temporal head, after the
    backward of both losses; the release's unused conv_seg gets none."""
    fx, _, _, grads = train_step
    ref = convert_tv3s.convert(fx["grads"], convert_tv3s.KEY_MAP)
    assert set(grads) == set(ref)
    noise = set(convert_tv3s.convert(dict.fromkeys(fx["noise_grad"].split("\n")), convert_tv3s.KEY_MAP))
    scale = max(float(g.abs().max()) for g in ref.values())
    worst = {}
    for name, g in ref.items():
        assert grads[name] is not None, name
        if name in noise:  # analytically 0 (the fusion BN removes per-channel constants): rounding only
            worst[name] = float((grads[name].float() - g).abs().max()) / scale
        else:
            worst[name] = rel_diff(grads[name].float(), g)
    bad = {k: v for k, v in worst.items() if v > REL}
    assert not bad, f"gradients off by more than {REL} relative: {bad}"


def test_train_step_batch_norm_statistics_equal_the_release(train_step):
    """The fusion BN normalises with (and records) statistics over all B x T frames, as the
    release's SyncBN on one process."""
    fx, model, _, _ = train_step
    bn = model.sem_seg_head.linear_fuse.bn
    for key in ("running_mean", "running_var"):
        assert rel_diff(getattr(bn, key).float(), fx["bn_after"][key]) <= REL


# ---- one optimizer step of the whole model: tv3s_optim_step.pt --------------------------------

@pytest.fixture(scope="module")
def optim_step():
    fx = load_fixture("tv3s_optim_step.pt")
    cfg = no_dropout_cfg(fx["settings"])
    model = build_train_model(cfg)
    initial = generator.recipe_weights(parse_shapes(fx["param_shapes"]), fx["weights_seed"])
    missing, unexpected = model.load_state_dict(convert_tv3s.convert(initial, convert_tv3s.KEY_MAP), strict=False)
    params = dict(model.named_parameters())
    assert unexpected == [] and not set(missing) & set(params), "every parameter comes from the recipe"
    train_mode_float64(model)
    optimizer = build_optimizer(cfg, model)
    groups = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    losses = model(clip_batch(fx["frames"], fx["labels"]))
    total = sum(losses.values())
    optimizer.zero_grad()
    total.backward()
    grads = {n: p.grad.clone() for n, p in params.items()}
    optimizer.step()
    # official name: (initial, after the step, gradient, param group)
    ours = {official: (initial[official], params[n].detach(), grads[n], groups[id(params[n])])
            for n, official in official_names(params).items()}
    return fx, total.item(), ours


def fixture_rows(fx):
    return {n: i for i, n in enumerate(fx["names"].split("\n"))}


def checksum(x):
    return torch.tensor([x.double().sum(), x.double().abs().sum()])


@pytest.mark.slow  # the MiT-B1 model's step: 3-10 s
def test_optimizer_lr_and_weight_decay_of_every_parameter_equal_the_release(optim_step):
    """mmcv 1.3's constructor with the release's paramwise_cfg (custom_keys pos_block / norm:
    decay x0, head: lr x10; longest key first, the first match only, so the head's norms keep
    weight decay 0.01), read from the release config by the generator."""
    fx, _, ours = optim_step
    rows = fixture_rows(fx)
    assert set(rows) - set(ours) == {"decode_head.conv_seg.weight", "decode_head.conv_seg.bias"}
    wrong = {}
    for name, (_, _, _, group) in ours.items():
        want = (float(fx["lr"][rows[name]]), float(fx["weight_decay"][rows[name]]))
        got = (group["lr"], group["weight_decay"])
        if got != pytest.approx(want, rel=1e-12, abs=0):
            wrong[name] = {"ours": got, "release": want}
    assert not wrong, f"{len(wrong)} parameters with another (lr, weight_decay) than the release's: {wrong}"


@pytest.mark.slow  # the MiT-B1 model's step: 3-10 s
def test_optimizer_step_loss_and_gradients_equal_the_release(optim_step):
    """The whole model's loss (MiT-B1 + head) and every gradient's (sum, sum |g|)."""
    fx, total, ours = optim_step
    assert total == pytest.approx(fx["log_vars"]["loss"], rel=REL)
    rows = fixture_rows(fx)
    noise = set(fx["noise_grad"].split("\n"))
    scale = float(fx["grad_check"][:, 1].max())
    bad = {}
    for name, (_, _, g, _) in ours.items():
        ref = fx["grad_check"][rows[name]]
        # measured against sum |g| (a sum may cancel); rounding-noise gradients against the largest
        err = float((checksum(g) - ref).abs().max() / (scale if name in noise else ref[1]))
        if err > REL:
            bad[name] = err
    assert not bad, f"gradient checksums off (relative): {bad}"


def flipped_steps(p, ref, lr):
    """Elements of `p` off `ref` by more than REL x max |ref|: their number if each is one step
    taken the other way (<= 2 lr off), else None."""
    diff = (p.double() - ref.double()).abs()
    off = diff > REL * float(ref.abs().max())
    return int(off.sum()) if bool((diff[off] <= 2 * lr * (1 + 1e-3)).all()) else None


@pytest.mark.slow  # the MiT-B1 model's step: 3-10 s
def test_optimizer_step_updated_parameters_equal_the_release(optim_step):
    """After one AdamW step at the constructor's lrs: the head and a few backbone tensors element
    by element, every other parameter by its step's (sum |step|, sum step)."""
    fx, _, ours = optim_step
    rows = fixture_rows(fx)
    noise = set(fx["noise_grad"].split("\n"))
    bad = {}
    for name, (p0, p, _, group) in ours.items():
        lr = group["lr"]
        step = p.double() - p0.double()
        if name in noise:
            # the gradient is rounding noise: Adam steps ~lr along its arbitrary sign
            decay = -lr * group["weight_decay"] * p0.double()
            assert float((step - decay).abs().max()) <= lr * (1 + 1e-4), name
            continue
        if name in fx["updated"]:
            flips = flipped_steps(p, fx["updated"][name], lr)
            if flips is None or flips > FLIPS:
                bad[name] = f"max relative difference {rel_diff(p.double(), fx['updated'][name].double()):.3g}"
            continue
        total, total_abs = fx["step_check"][rows[name]].tolist()
        got, got_abs = checksum(step).tolist()
        if abs(got_abs - total_abs) > REL * total_abs or abs(got - total) > REL * total_abs + 2 * lr * FLIPS:
            bad[name] = f"step sum {got:.6g} vs {total:.6g}, sum |step| {got_abs:.8g} vs {total_abs:.8g}"
    assert not bad, f"updated parameters off: {bad}"

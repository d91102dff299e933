"""Parity with the official MPVSS release (ziplab/MPVSS 5e19a65), from fixtures made by running it.

- mpvss_flow_official.pt: the flow module's forward (VSPW config).
- mpvss_train_step.pt (generate/mpvss_train_step.py): one training step: key-frame predictions
  through the trained class/mask embeddings, the flow module, the release's warp, the set
  criterion, the gradient of every trained parameter, and one optimizer step.
tests/data/official/README.md says how they were made and what they hold.

The step runs in float64 on both sides, the set criterion in float32 (the fixture README says
why), and is checked end to end, as training calls it, and part by part, each part fed with the
release's own inputs and upstream gradient (embeddings, flow module, warp, criterion), which
says where a difference comes from. Every comparison is relative, at 1e-5.
"""

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import ImageList

from conftest import DATA, REPO, load_script
from vss.data.mappers import mask2former_targets
from vss.engine import load_cfg, setup_cfg
from vss.engine.optimizer import build_optimizer
from vss.engine.trainer import Trainer
from vss.modeling.mask2former.maskformer import prepare_targets
from vss.modeling.mpvss import FlowEstimator
from vss.modeling.mpvss.warp import warp_masks

OFFICIAL = DATA / "official"
CONFIG = str(REPO / "configs/vspw/mpvss/R50.yaml")
REL = 1e-5  # relative tolerance of the training step's checks
# The fixture generator's recipe helpers (fixture_weights, probes, ...); it imports no official code.
gen = load_script(OFFICIAL / "generate/mpvss_train_step.py")


def load_fixture(name):
    return torch.load(OFFICIAL / name, map_location="cpu", weights_only=True)


def rel_diff(ours, ref):
    """max |ours - ref| / max |ref|."""
    return float((ours - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def record_diff(ours, ref):
    """Relative difference of a tensor from the fixture's record of it (whole, or `probes`)."""
    if torch.is_tensor(ref):
        return rel_diff(ours, ref)
    p = gen.probes(ours)
    return max(
        float((p["values"] - ref["values"]).abs().max() / ref["absmax"]),
        float((p["proj"] - ref["proj"]).abs().max() / ref["norm"]),
        float((p["norm"] - ref["norm"]).abs() / ref["norm"]),
    )


def assert_records(ours, refs, name=lambda n: n):
    """Every fixture record `refs[n]` matches `ours[name(n)]` to REL; the worst five in the message."""
    worst = {n: record_diff(ours[name(n)], ref) for n, ref in refs.items()}
    assert max(worst.values()) <= REL, sorted(worst.items(), key=lambda kv: -kv[1])[:5]


def load_recipe(module, names, check, seed):
    """fixture_weights into `module`, after checking the names and the recipe's checksums."""
    assert sorted(module.state_dict()) == names.split("\n"), "state dict names differ from the release's"
    weights = gen.fixture_weights(module.state_dict(), seed)
    assert torch.allclose(gen.weights_check(weights).float(), check, rtol=1e-6, atol=1e-6), "recipe not reproduced"
    module.load_state_dict(weights, strict=True)


# ----------------------------------------------------------------------------- forward fixture
def test_flow_module_forward_equals_release():
    fx = load_fixture("mpvss_flow_official.pt")
    flow_module = FlowEstimator(load_cfg(CONFIG)).eval()
    load_recipe(flow_module, fx["weights_names"], fx["weights_check"], fx["seed"])
    b = fx["image"].shape[0]
    sizes = [(fx["image_height"], fx["image_width"])] * b
    queries = fx["key_queries_qbc"].transpose(0, 1)
    with torch.no_grad():
        flow = flow_module(fx["image"].float(), fx["key_image"].float(), queries, sizes)
        swapped = flow_module(fx["key_image"].float(), fx["image"].float(), queries, sizes)
    # the fixture README's tolerance: 1e-4 of max |flow|
    assert rel_diff(flow.flatten(0, 1), fx["flow"]) <= 1e-4
    assert rel_diff(swapped.flatten(0, 1), fx["flow"]) > 0.1  # the check can fail


# ----------------------------------------------------------------------------- training step
@pytest.fixture(scope="module")
def fx():
    return load_fixture("mpvss_train_step.pt")


def release_to_ours(name):
    """The release's MPVSS parameter names -> ours (the flow module is `temporal.flow` here)."""
    return "temporal.flow." + name[len("motion."):] if name.startswith("motion.") else name


def build(fx):
    """configs/vspw/mpvss/R50.yaml at the fixture's small sizes, the release's warp, the fixture's
    weights; the trained modules in float64."""
    s = fx["settings"]
    inplanes = s["encoder_inplanes"]
    cfg = setup_cfg(CONFIG, [
        "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
        "MODEL.MPVSS.WARP", "release",  # the fixture comes from the release's grid warp
        "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", s["num_queries"], "MODEL.MOTION.NUM_QUERIES", s["num_queries"],
        "MODEL.SEM_SEG_HEAD.MASK_DIM", s["mask_dim"],
        "MODEL.MOTION.DECODER_LAYERS", s["motion_decoder_layers"],
        "MODEL.MOTION.DIM_FEEDFORWARD", s["motion_dim_feedforward"],
        "MODEL.MOTION.ENCODER_CHANNELS", [*inplanes[1:], 2 * inplanes[5]],
    ])
    model = build_model(cfg)
    load_recipe(model.temporal.flow, fx["flow_weights_names"], fx["flow_weights_check"], s["seed_flow_weights"])
    predictor = model.sem_seg_head.predictor
    head = torch.nn.ModuleDict({k: getattr(predictor, k) for k in ("decoder_norm", "class_embed", "mask_embed")})
    load_recipe(head, fx["head_weights_names"], fx["head_weights_check"], s["seed_head_weights"])
    model.temporal.flow.double()
    predictor.double()
    return cfg, model.train()


def key_predictions(predictor, fx):
    """(queries, [(class logits, mask logits)] per decoder layer) of the fixture's decoder outputs,
    as our Mask2Former decoder makes them (decoder_norm, then `predict`)."""
    predictions = []
    for output in fx["decoder_outputs"].double():
        queries = predictor.decoder_norm(output).transpose(0, 1)
        predictions.append(predictor.predict(queries, fx["mask_features"].double()))
    return queries, predictions


def padded(model, frames):
    return ImageList.from_tensors(list(frames.float()), model.size_divisibility)


@pytest.fixture(scope="module")
def parts(fx):
    """A model with the fixture's weights, for the part-by-part checks."""
    return build(fx)


def test_embeddings_part_equals_release(parts, fx):
    """Key-frame class/mask logits from the fixture's decoder outputs; class_embed / mask_embed
    gradients from the release's d loss / d (logits, masks)."""
    _, model = parts
    predictor = model.sem_seg_head.predictor
    predictor.zero_grad()
    queries, predictions = key_predictions(predictor, fx)
    logits = torch.stack([c for c, _ in predictions])
    masks = torch.stack([m for _, m in predictions])
    assert rel_diff(queries.detach(), fx["key_queries"]) <= REL
    assert rel_diff(logits.detach(), fx["key_logits"]) <= REL
    assert rel_diff(masks.detach(), fx["key_masks"]) <= REL
    torch.autograd.backward([logits, masks], [fx["key_logits_grad"].double(), fx["key_masks_grad"].double()])
    refs = {n: g for n, g in fx["grads"].items() if n.startswith("sem_seg_head.")}
    assert refs and all(".class_embed." in n or ".mask_embed." in n for n in refs)
    assert_records({f"sem_seg_head.predictor.{n}": p.grad for n, p in predictor.named_parameters()
                    if p.grad is not None}, refs)


def test_flow_part_equals_release(parts, fx):
    """The flow module on the fixture's pair; its gradients from the release's d loss / d flow."""
    _, model = parts
    flow_module = model.temporal.flow
    flow_module.zero_grad()
    images, key_images = padded(model, fx["image"]), padded(model, fx["key_image"])
    flow = flow_module(images.tensor, key_images.tensor, fx["key_queries"], images.image_sizes).flatten(0, 1)
    assert rel_diff(flow.detach(), fx["flow"]) <= REL
    flow.backward(fx["flow_grad"].double())
    refs = {n: g for n, g in fx["grads"].items() if n.startswith("motion.")}
    assert len(refs) == len(list(flow_module.parameters()))
    assert_records({f"motion.{n}": p.grad for n, p in flow_module.named_parameters()}, refs)


def test_warp_part_equals_release(fx):
    """warp_masks "release" on the fixture's key masks and flow, forward and backward; the exact
    warp is far from it (the check can fail)."""
    b, q = fx["settings"]["batch_size"], fx["settings"]["num_queries"]
    masks = fx["key_masks"].double().permute(1, 2, 0, 3, 4).requires_grad_()  # (B, Q, predictions, h, w)
    flow = fx["flow"].unflatten(0, (b, q)).clone().requires_grad_()
    warped = warp_masks(masks, flow, "release")
    assert rel_diff(warped.detach(), fx["warped_masks"].permute(1, 2, 0, 3, 4)) <= REL
    warped.backward(fx["warped_masks_grad"].double().permute(1, 2, 0, 3, 4))
    assert rel_diff(masks.grad, fx["key_masks_grad"].permute(1, 2, 0, 3, 4)) <= REL
    assert rel_diff(flow.grad.flatten(0, 1), fx["flow_grad"]) <= REL
    with torch.no_grad():
        exact = warp_masks(masks, flow, "exact")
    assert rel_diff(exact, fx["warped_masks"].permute(1, 2, 0, 3, 4)) > 0.1


def test_criterion_part_equals_release(parts, fx):
    """The weighted set-criterion losses of the release's warped masks and class logits, point
    sampling drawn from the same seed, and their gradients."""
    _, model = parts
    criterion = model.temporal.criterion
    warped = fx["warped_masks"].double().requires_grad_()
    logits = fx["key_logits"].double().requires_grad_()
    predictions = [{"pred_logits": c, "pred_masks": m} for c, m in zip(logits, warped)]
    instances = [{"instances": mask2former_targets(labels.long())} for labels in fx["labels"]]
    targets = prepare_targets(instances, fx["target_masks"][0].shape[-2:], "cpu")
    torch.manual_seed(fx["settings"]["seed_criterion"])
    losses = criterion({**predictions[-1], "aux_outputs": predictions[:-1]}, targets)
    weighted = {k: v * criterion.weight_dict[k] for k, v in losses.items() if k in criterion.weight_dict}
    assert list(weighted) == list(fx["losses"])
    worst = {k: float((weighted[k].detach() - v).abs() / v.abs()) for k, v in fx["losses"].items()}
    assert max(worst.values()) <= REL, sorted(worst.items(), key=lambda kv: -kv[1])[:5]
    sum(weighted.values()).backward()
    assert rel_diff(warped.grad, fx["warped_masks_grad"]) <= REL
    assert rel_diff(logits.grad, fx["key_logits_grad"]) <= REL


@pytest.fixture(scope="module")
def step(fx):
    """Our whole training step on the fixture's pair: VideoSegmentor.forward (MaskPropagation.losses)
    with the backbone and the frozen Mask2Former layers replaced by the fixture's key-frame decoder
    outputs, backward; then build_optimizer's AdamW step at the scheduler's iteration 0, from the
    fixture's `step_gradients`."""
    s = fx["settings"]
    cfg, model = build(fx)
    predictor = model.sem_seg_head.predictor

    def key_frame_head(features):  # what our Mask2Former head returns, from the fixture's decoder outputs
        queries, predictions = key_predictions(predictor, fx)
        predictions = [{"pred_logits": c, "pred_masks": m} for c, m in predictions]
        return {**predictions[-1], "aux_outputs": predictions[:-1], "queries": queries}

    model.backbone.forward = lambda x: {}
    model.sem_seg_head.forward = key_frame_head
    seen, matches = {}, []
    model.temporal.flow.register_forward_hook(lambda m, args, out: seen.update(flow=out.detach()))
    model.temporal.criterion.register_forward_pre_hook(lambda m, args: seen.update(outputs=args[0], targets=args[1]))
    model.temporal.criterion.matcher.register_forward_hook(lambda m, args, out: matches.append(out))

    batched = [{"image": fx["image"][b], "key_image": fx["key_image"][b], "file_name": f"pair{b}",
                "instances": mask2former_targets(fx["labels"][b].long())} for b in range(s["batch_size"])]
    optimizer = build_optimizer(cfg, model)
    scheduler = Trainer.build_lr_scheduler(cfg, optimizer)
    torch.manual_seed(s["seed_criterion"])  # the criterion's point sampling, drawn as the release draws it
    losses = model(batched)
    optimizer.zero_grad()
    sum(losses.values()).backward()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    grads = {n: p.grad.clone() for n, p in params.items() if p.grad is not None}
    # the optimizer step is checked from the fixture's reproducible gradients (see step_gradients)
    flow_grads, embed_grads = gen.step_gradients(
        dict(model.temporal.flow.named_parameters()),
        {n: p for n, p in predictor.named_parameters() if p.requires_grad}, s["seed_step_grads"])
    for n, g in [*(("temporal.flow." + k, v) for k, v in flow_grads.items()),
                 *(("sem_seg_head.predictor." + k, v) for k, v in embed_grads.items())]:
        params[n].grad = g
    before = {n: p.detach().clone() for n, p in params.items()}
    names = {p: n for n, p in params.items()}
    groups = [(names[p], g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]]
    optimizer.step()
    return {
        "cfg": cfg, "losses": {k: v.detach() for k, v in losses.items()}, "flow": seen["flow"],
        "outputs": seen["outputs"], "targets": seen["targets"], "matches": matches,
        "trainable": sorted(params), "grads": grads, "groups": groups,
        "updates": {n: p.detach() - before[n] for n, p in params.items()},
        "scheduled_lr": gen.lr_at(scheduler, fx["scheduled_lr_iters"].tolist()),
    }


def test_train_step_targets_and_matching_equal_release(step, fx):
    for b, target in enumerate(step["targets"]):
        assert torch.equal(target["labels"], fx["target_labels"][b])
        assert torch.equal(target["masks"].bool(), fx["target_masks"][b].bool())
    assert all((labels == 255).any() for labels in fx["labels"])  # ignored pixels are in play
    # per prediction set as the criterion visits them (final, then auxiliary 0..8), per image
    ours = [[torch.stack([q, t]) for q, t in m] for m in step["matches"]]
    assert len(ours) == len(fx["matches"]) == step["cfg"].MODEL.MASK_FORMER.DEC_LAYERS
    for i, (a, b) in enumerate(zip(ours, fx["matches"])):
        assert all(torch.equal(x, y) for x, y in zip(a, b)), f"prediction set {i}: matching differs"


def test_train_step_end_to_end_equals_release(step, fx):
    """MaskPropagation.losses as training calls it: the flow and warped masks it makes, its losses,
    the trained parameters (the release's MODEL.FINETUNE set) and their gradients."""
    outputs = step["outputs"]
    predictions = outputs["aux_outputs"] + [outputs]
    assert rel_diff(step["flow"].flatten(0, 1), fx["flow"]) <= REL
    warped = torch.stack([p["pred_masks"] for p in predictions]).detach()
    assert rel_diff(warped, fx["warped_masks"]) <= REL
    assert list(step["losses"]) == list(fx["losses"])
    worst = {k: float((step["losses"][k] - v).abs() / v.abs()) for k, v in fx["losses"].items()}
    assert max(worst.values()) <= REL, sorted(worst.items(), key=lambda kv: -kv[1])[:5]
    assert step["trainable"] == sorted(step["grads"]) == sorted(map(release_to_ours, fx["grads"]))
    assert_records(step["grads"], fx["grads"], release_to_ours)
    total = torch.nn.utils.get_total_norm(list(step["grads"].values()))
    assert abs(float(total / fx["grad_norm"]) - 1) <= REL


def test_optimizer_step_equals_release(step, fx):
    """build_optimizer's groups (one per parameter: lr, weight decay), the lr schedule, and one
    AdamW step with full-model gradient clipping from the same gradients."""
    assert sorted(step["groups"]) == sorted(
        (release_to_ours(n), fx["lr"][n], fx["weight_decay"][n]) for n in fx["lr"])
    assert torch.allclose(step["scheduled_lr"], fx["scheduled_lr"], rtol=1e-9, atol=0)
    assert_records(step["updates"], fx["updates"], release_to_ours)

"""Mask2Former: upstream key layout and sizes, numerical parity, checkpoints, training, inference."""
import math
import pickle

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Instances

import vss  # noqa: F401  (registers the models)
from vss import add_vss_config
from vss.modeling.mask2former import (
    MultiScaleMaskedTransformerDecoder,
    semantic_inference,
    semantic_postprocess,
)
from vss.modeling.mask2former.transformer_decoder import CrossAttentionLayer, FFNLayer, SelfAttentionLayer
from conftest import read_key_list

# Upstream parameter counts (IMPLEMENTATION_NOTES section 2).
PARAMS = {
    "r50": 44_034_685,
    "r50_c19": 44_007_700,
    "r101": 63_026_813,
    "swint": 47_432_951,
    "swins": 68_750_855,
    "swinb": 106_915_509,
    "swinl": 215_482_097,
}

SWIN = {  # embed dim, depths, heads, window, pretrain size
    "swint": (96, [2, 2, 6, 2], [3, 6, 12, 24], 7, 224),
    "swins": (96, [2, 2, 18, 2], [3, 6, 12, 24], 7, 224),
    "swinb": (128, [2, 2, 18, 2], [4, 8, 16, 32], 12, 384),
    "swinl": (192, [2, 2, 18, 2], [6, 12, 24, 48], 12, 384),
}


def vspw_cfg(name):
    """Upstream-style semantic Mask2Former config for the key file `keys_{name}.txt`."""
    cfg = get_cfg()
    add_vss_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.META_ARCHITECTURE = "MaskFormer"
    head = cfg.MODEL.SEM_SEG_HEAD
    head.NAME = "MaskFormerHead"
    head.PIXEL_DECODER_NAME = "MSDeformAttnPixelDecoder"
    head.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    head.CONVS_DIM = 256
    head.MASK_DIM = 256
    head.NORM = "GN"
    head.TRANSFORMER_ENC_LAYERS = 6
    head.NUM_CLASSES = 19 if name == "r50_c19" else 124
    mf = cfg.MODEL.MASK_FORMER
    mf.TRANSFORMER_IN_FEATURE = "multi_scale_pixel_decoder"
    mf.DEC_LAYERS = 10
    mf.NUM_OBJECT_QUERIES = 100
    if name.startswith("r"):
        cfg.MODEL.BACKBONE.NAME = "build_resnet_backbone"
        # the key files hold BatchNorm statistics for every stage: a trainable BN, nothing frozen
        cfg.MODEL.BACKBONE.FREEZE_AT = 0
        res = cfg.MODEL.RESNETS
        res.DEPTH = 101 if name == "r101" else 50
        res.NORM = "SyncBN"
        res.STEM_TYPE = "basic"
        res.STRIDE_IN_1X1 = False
        res.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    else:
        cfg.MODEL.BACKBONE.NAME = "D2SwinTransformer"
        embed, depths, heads, window, pretrain = SWIN[name]
        sw = cfg.MODEL.SWIN
        sw.EMBED_DIM, sw.DEPTHS, sw.NUM_HEADS = embed, depths, heads
        sw.WINDOW_SIZE, sw.PRETRAIN_IMG_SIZE = window, pretrain
    return cfg


def bilinear(x, size):
    return torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)




def check_upstream_layout(reference_dir, name):
    model = build_model(vspw_cfg(name))
    expected = read_key_list(reference_dir / "mask2former_keys" / f"keys_{name}.txt")
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(ours) - set(expected)) == []
    assert sorted(set(expected) - set(ours)) == []
    assert {k: v for k, v in ours.items() if v != expected[k]} == {}
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]


@pytest.mark.parametrize("name", ["r50", "r50_c19", "r101", "swint", "swins"])
def test_upstream_keys_shapes_and_parameter_count(reference_dir, name):
    check_upstream_layout(reference_dir, name)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["swinb", "swinl"])
def test_upstream_keys_large_swin(reference_dir, name):
    check_upstream_layout(reference_dir, name)


def tiny_cfg(reference_dir):
    """The parity fixture's upstream config, merged unchanged."""
    cfg = get_cfg()
    add_vss_config(cfg)
    cfg.merge_from_file(str(reference_dir / "fixtures" / "mask2former_tiny_swin_config.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


@pytest.fixture(scope="module")
def fixture(reference_dir):
    return torch.load(reference_dir / "fixtures" / "mask2former_tiny_swin.pt", weights_only=False)


@pytest.fixture(scope="module")
def tiny_model(reference_dir, fixture):
    model = build_model(tiny_cfg(reference_dir)).eval()
    model.load_state_dict(fixture["state_dict"], strict=True)
    return model


def test_parity_with_upstream(tiny_model, fixture):
    image = fixture["image"]
    with torch.no_grad():
        out = tiny_model([{"image": image, "height": 96, "width": 128}])[0]["sem_seg"]
        resized = tiny_model([{"image": image, "height": 116, "width": 158}])[0]["sem_seg"]
    assert out.shape == fixture["sem_seg"].shape == (7, 96, 128)
    assert (out - fixture["sem_seg"]).abs().max() <= 1e-4
    assert resized.shape == fixture["sem_seg_resized"].shape == (7, 116, 158)
    assert (resized - fixture["sem_seg_resized"]).abs().max() <= 1e-4


def test_postprocess_before_inference_crops_mask_logits(tiny_model, fixture):
    """The option resizes mask logits first; without a resize both orders agree."""
    image = fixture["image"][:, :90, :120]  # padded to 96 x 128 inside the model
    with torch.no_grad():
        images = tiny_model.preprocess_image([{"image": image}])
        raw = tiny_model.forward_padded(images.tensor)
        default = tiny_model([{"image": image, "height": 45, "width": 60}])[0]["sem_seg"]
        same_size = tiny_model([{"image": image}])[0]["sem_seg"]
        tiny_model.sem_seg_postprocess_before_inference = True
        try:
            before = tiny_model([{"image": image, "height": 45, "width": 60}])[0]["sem_seg"]
            before_same_size = tiny_model([{"image": image}])[0]["sem_seg"]
        finally:
            tiny_model.sem_seg_postprocess_before_inference = False
    assert images.tensor.shape[-2:] == (96, 128) and images.image_sizes == [(90, 120)]
    masks = bilinear(raw["pred_masks"], (96, 128))
    logits = bilinear(masks[:, :, :90, :120], (45, 60))
    expected = semantic_inference(raw["pred_logits"][0], logits[0])
    torch.testing.assert_close(before, expected, rtol=0, atol=1e-6)
    assert (before - default).abs().max() > 1e-3  # the order matters once resized
    torch.testing.assert_close(before_same_size, same_size, rtol=0, atol=1e-5)


def test_raw_outputs_and_prediction_head(tiny_model, fixture):
    """forward_padded exposes what MPVSS needs; `predict` re-runs the heads on given queries."""
    with torch.no_grad():
        images = tiny_model.preprocess_image([{"image": fixture["image"]}] * 2)
        out = tiny_model.forward_padded(images.tensor)
        logits, masks = tiny_model.sem_seg_head.predictor.predict(out["queries"], out["mask_features"])
    assert out["pred_logits"].shape == (2, 12, 8)
    assert out["pred_masks"].shape == (2, 12, 24, 32)
    assert out["queries"].shape == (2, 12, 64)
    assert out["mask_features"].shape == (2, 64, 24, 32)
    assert len(out["aux_outputs"]) == 3  # DEC_LAYERS 4 = learnable-query prediction + 3 blocks
    torch.testing.assert_close(logits, out["pred_logits"], rtol=0, atol=0)
    torch.testing.assert_close(masks, out["pred_masks"], rtol=0, atol=0)
    # the auxiliary predictions are distinct, earlier predictions
    assert (out["aux_outputs"][-1]["pred_masks"] - out["pred_masks"]).abs().max() > 1e-3


def test_upstream_pkl_loads_through_detection_checkpointer(reference_dir, fixture, tmp_path):
    state = {k: v.numpy() for k, v in fixture["state_dict"].items()}
    path = tmp_path / "model_final.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "upstream"}, f)
    model = build_model(tiny_cfg(reference_dir))
    checkpointer = DetectionCheckpointer(model)
    incompatible = checkpointer._load_model(checkpointer._load_file(str(path)))
    assert incompatible.missing_keys == [] and incompatible.unexpected_keys == []
    assert incompatible.incorrect_shapes == []
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in fixture["state_dict"].items())


def tiny_batch(num_images=2, size=64, num_classes=7):
    """Images with a few rectangular class regions and their per-class masks."""
    g = torch.Generator().manual_seed(0)
    batch = []
    for i in range(num_images):
        image = torch.randint(0, 256, (3, size, size - 8 * i), generator=g, dtype=torch.uint8)
        h, w = image.shape[-2:]
        label = torch.zeros(h, w, dtype=torch.int64)
        label[: h // 2] = 1 + i
        label[h // 2 :, : w // 3] = 4
        classes = label.unique()
        instances = Instances((h, w))
        instances.gt_classes = classes
        instances.gt_masks = torch.stack([label == c for c in classes])
        batch.append({"image": image, "instances": instances})
    return batch


@pytest.fixture
def train_model(reference_dir):
    cfg = tiny_cfg(reference_dir)
    cfg.MODEL.SWIN.DROP_PATH_RATE = 0.0
    cfg.MODEL.MASK_FORMER.TRAIN_NUM_POINTS = 256
    torch.manual_seed(0)
    return build_model(cfg).train()


def test_training_losses_gradients_and_descent(train_model):
    """One step: every deep-supervision loss is finite and gradients reach the predictor;
    a few AdamW steps on the same batch then lower the total loss."""
    batch = tiny_batch()
    optimizer = torch.optim.AdamW(train_model.parameters(), lr=1e-3)
    predictor = train_model.sem_seg_head.predictor
    names = {"loss_ce", "loss_mask", "loss_dice"}
    totals = []
    for step in range(6):
        torch.manual_seed(step)  # point sampling is random; keep the run reproducible
        losses = train_model(batch)
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        if step == 0:
            assert set(losses) == names | {f"{n}_{i}" for n in names for i in range(3)}
            assert all(torch.isfinite(v) and v > 0 for v in losses.values())
            for param in (
                predictor.class_embed.weight,
                predictor.mask_embed.layers[0].weight,
                predictor.query_feat.weight,
                predictor.transformer_cross_attention_layers[0].multihead_attn.in_proj_weight,
                train_model.sem_seg_head.pixel_decoder.mask_features.weight,
                train_model.backbone.patch_embed.proj.weight,
            ):
                assert param.grad is not None and param.grad.abs().sum() > 0
        optimizer.step()
        totals.append(total.item())
    assert totals[-1] < 0.8 * totals[0], totals


def test_losses_are_weighted_by_the_criterion_weight_dict(train_model):
    weights = train_model.criterion.weight_dict
    assert weights["loss_ce"] == 2.0 and weights["loss_mask"] == 5.0 and weights["loss_dice"] == 5.0
    raw = {"loss_ce": torch.tensor(1.5), "loss_mask_2": torch.tensor(0.5), "loss_other": torch.tensor(9.0)}
    assert train_model.weighted_losses(raw) == {"loss_ce": 3.0, "loss_mask_2": 2.5}


def test_semantic_inference_by_hand():
    # softmax([ln 2, 0, 0]) = [1/2, 1/4, 1/4]; softmax([0, 0, 0]) = [1/3, 1/3, 1/3]
    mask_cls = torch.tensor([[math.log(2.0), 0.0, 0.0], [0.0, 0.0, 0.0]])
    # sigmoid(0) = 1/2; sigmoid(+-ln 3) = 3/4, 1/4
    mask_pred = torch.tensor([[[0.0, 0.0]], [[math.log(3.0), -math.log(3.0)]]])
    expected = torch.tensor(
        [
            [[1 / 2 * 1 / 2 + 1 / 3 * 3 / 4, 1 / 2 * 1 / 2 + 1 / 3 * 1 / 4]],
            [[1 / 4 * 1 / 2 + 1 / 3 * 3 / 4, 1 / 4 * 1 / 2 + 1 / 3 * 1 / 4]],
        ]
    )
    torch.testing.assert_close(semantic_inference(mask_cls, mask_pred), expected)


def test_semantic_postprocess_crops_padding_before_resizing():
    mask_cls = torch.tensor([[2.0, 0.0, -1.0]])
    mask_pred = torch.zeros(1, 4, 6)
    mask_pred[:, :2, :3] = torch.tensor([[-2.0, 0.0, 2.0], [1.0, -1.0, 3.0]])
    mask_pred[:, 2:, :] = 50.0  # padding: must not reach the output
    mask_pred[:, :, 3:] = 50.0
    cropped = semantic_inference(mask_cls, mask_pred[:, :2, :3])
    same = semantic_postprocess(mask_cls, mask_pred, (2, 3), 2, 3)["sem_seg"]
    torch.testing.assert_close(same, cropped)
    up = semantic_postprocess(mask_cls, mask_pred, (2, 3), 4, 6)["sem_seg"]
    expected = bilinear(cropped[None], (4, 6))[0]
    torch.testing.assert_close(up, expected)
    assert up.max() < semantic_inference(mask_cls, torch.full((1, 1, 1), 50.0)).max()


def tiny_decoder(**kwargs):
    args = dict(
        in_channels=16, num_classes=3, hidden_dim=16, num_queries=4, nheads=2, dim_feedforward=32,
        dec_layers=2, pre_norm=False, mask_dim=8, enforce_input_project=False,
    )
    args.update(kwargs)
    return MultiScaleMaskedTransformerDecoder(**args)


def test_attention_mask_blocks_background_and_frees_empty_rows():
    decoder = tiny_decoder()
    logits = torch.tensor([[[[3.0, -3.0], [-3.0, 3.0]], [[-3.0, -3.0], [-3.0, -3.0]]]])  # B=1, Q=2
    blocked = decoder.attention_mask(logits, (2, 2))
    assert blocked.shape == (2, 2, 4)  # (B * heads, Q, h * w)
    assert blocked[0, 0].tolist() == [False, True, True, False]
    assert blocked[0, 1].tolist() == [False] * 4  # empty mask: attends everywhere
    assert torch.equal(blocked[0], blocked[1])  # the same mask for every head


def test_decoder_input_projection_and_layers():
    assert isinstance(tiny_decoder().input_proj[0], torch.nn.Sequential)
    assert isinstance(tiny_decoder(in_channels=8).input_proj[0], torch.nn.Conv2d)
    assert isinstance(tiny_decoder(enforce_input_project=True).input_proj[0], torch.nn.Conv2d)
    decoder = tiny_decoder(dec_layers=4).eval()
    levels = [torch.randn(1, 16, s, s) for s in (2, 4, 8)]
    out = decoder(levels, torch.randn(1, 8, 16, 16))
    assert len(out["aux_outputs"]) == 4
    assert out["pred_logits"].shape == (1, 4, 4) and out["pred_masks"].shape == (1, 4, 16, 16)
    with pytest.raises(ValueError, match="expected 3 levels"):
        decoder(levels[:2], torch.randn(1, 8, 16, 16))


@pytest.mark.parametrize("pre_norm", [False, True])
def test_decoder_layers_residual_and_norm_order(pre_norm):
    """Post-norm: LN(x + f(x)); pre-norm (PRE_NORM): x + f(LN(x)). Dropout is off by default."""
    torch.manual_seed(0)
    x, pos, mem, mem_pos = (torch.randn(n, 2, 8) for n in (3, 3, 5, 5))
    ffn = FFNLayer(8, 16, normalize_before=pre_norm).eval()
    sa = SelfAttentionLayer(8, 2, normalize_before=pre_norm).eval()
    ca = CrossAttentionLayer(8, 2, normalize_before=pre_norm).eval()
    for layer in (ffn, sa, ca):
        with torch.no_grad():  # make the norms non-trivial so their placement matters
            layer.norm.weight.uniform_(0.5, 1.5)
            layer.norm.bias.uniform_(-0.5, 0.5)

    def residual(layer, f):
        return x + f(layer.norm(x)) if pre_norm else layer.norm(x + f(x))

    with torch.no_grad():
        torch.testing.assert_close(ffn(x), residual(ffn, lambda y: ffn.linear2(torch.relu(ffn.linear1(y)))))
        torch.testing.assert_close(
            sa(x, query_pos=pos), residual(sa, lambda y: sa.self_attn(y + pos, y + pos, y)[0])
        )
        torch.testing.assert_close(
            ca(x, mem, pos=mem_pos, query_pos=pos),
            residual(ca, lambda y: ca.multihead_attn(y + pos, mem + mem_pos, mem)[0]),
        )
    assert ffn.dropout.p == sa.dropout.p == ca.dropout.p == 0.0


def test_decoder_ignores_config_dropout_like_upstream(reference_dir):
    cfg = tiny_cfg(reference_dir)
    cfg.MODEL.MASK_FORMER.DROPOUT = 0.3  # read by the pixel decoder only
    predictor = build_model(cfg).sem_seg_head.predictor
    assert {m.p for m in predictor.modules() if isinstance(m, torch.nn.Dropout)} == {0.0}


def test_size_divisibility_from_config_or_backbone(reference_dir):
    cfg = tiny_cfg(reference_dir)
    cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY = -1
    model = build_model(cfg)
    assert model.size_divisibility == model.backbone.size_divisibility == 32
    cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY = 64
    model = build_model(cfg)
    images = model.preprocess_image([{"image": torch.full((3, 70, 100), 200, dtype=torch.uint8)}])
    assert images.tensor.shape[-2:] == (128, 128) and images.image_sizes == [(70, 100)]
    # normalised image inside, zeros in the bottom/right padding
    expected = (200 - model.pixel_mean[:, 0, 0]) / model.pixel_std[:, 0, 0]
    torch.testing.assert_close(images.tensor[0, :, 69, 99], expected)
    assert images.tensor[0, :, 70:].abs().max() == 0 and images.tensor[0, :, :, 100:].abs().max() == 0

"""Every shipped config loads, the paper configs build the published architectures, and the VSPW/Cityscapes
configs carry their releases' recipes."""
import collections

import pytest
import torch
from detectron2.data import transforms as T
from detectron2.modeling import build_model

from conftest import REPO, read_key_list
from vss.engine import setup_cfg

CONFIGS = sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS)
def test_config_loads(config):
    cfg = setup_cfg(str(REPO / config))
    assert cfg.MODEL.META_ARCHITECTURE


def build_on_meta(config):
    cfg = setup_cfg(str(REPO / config), ["MODEL.DEVICE", "meta"])
    with torch.device("meta"):
        return build_model(cfg)




@pytest.mark.parametrize("config,key_file", [
    ("configs/vspw/mask2former/R50.yaml", "keys_r50.txt"),
    ("configs/vspw/mask2former/R101.yaml", "keys_r101.txt"),
    ("configs/vspw/mask2former/Swin-T.yaml", "keys_swint.txt"),
    ("configs/vspw/mask2former/Swin-S.yaml", "keys_swins.txt"),
    ("configs/vspw/mask2former/Swin-B-384.yaml", "keys_swinb.txt"),
    ("configs/vspw/mask2former/Swin-L-384.yaml", "keys_swinl.txt"),
    ("configs/cityscapes/mask2former/R50.yaml", "keys_r50_c19.txt"),
])
def test_mask2former_configs_match_upstream_checkpoints(config, key_file, reference_dir):
    model = build_on_meta(config)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == read_key_list(reference_dir / "mask2former_keys" / key_file)


# The releases' recipes, key by key (MPVSS release: configs/vspw/semantic-segmentation/Base-VSPW.yaml
# and configs/vspw/video-semantic-segmentation/MPVSS-VSPW.yaml; Cityscapes per frame: upstream
# Mask2Former's Base-Cityscapes-SemanticSegmentation.yaml). See projects/MPVSS/README.md, "Recipe".
BACKBONES = ["R50", "R101", "Swin-T", "Swin-S", "Swin-B-384", "Swin-L-384"]
IMAGENET = {"R50": "R-50.pkl", "R101": "R-101.pkl", "Swin-T": "swin_tiny_patch4_window7_224.pkl",
            "Swin-S": "swin_small_patch4_window7_224.pkl", "Swin-B-384": "swin_base_patch4_window12_384_22k.pkl",
            "Swin-L-384": "swin_large_patch4_window12_384_22k.pkl"}
COMMON = {
    "SOLVER.OPTIMIZER": "ADAMW", "SOLVER.IMS_PER_BATCH": 16, "SOLVER.MAX_ITER": 90000, "SOLVER.WEIGHT_DECAY": 0.05,
    "SOLVER.WEIGHT_DECAY_NORM": 0.0, "SOLVER.BACKBONE_MULTIPLIER": 0.1, "SOLVER.LR_SCHEDULER_NAME": "WarmupPolyLR",
    "SOLVER.POLY_LR_POWER": 0.9, "SOLVER.WARMUP_ITERS": 0, "SOLVER.CLIP_GRADIENTS.ENABLED": True,
    "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": "full_model", "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": 0.01,
    "SOLVER.AMP.ENABLED": True, "INPUT.MIN_SIZE_TRAIN_SAMPLING": "choice", "INPUT.CROP.TYPE": "absolute",
    "INPUT.CROP.SINGLE_CATEGORY_MAX_AREA": 1.0, "INPUT.COLOR_AUG_SSD": True, "INPUT.RANDOM_FLIP": "horizontal",
    "INPUT.SIZE_DIVISIBILITY": -1, "INPUT.FORMAT": "RGB", "DATALOADER.SAMPLE_BY": "video",
    "MODEL.ALLOW_RANDOM_INIT": False, "MODEL.MASK_FORMER.DEC_LAYERS": 10, "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES": 100,
    "MODEL.MASK_FORMER.SIZE_DIVISIBILITY": 32,
}
VSPW = {**COMMON, "SOLVER.BASE_LR": 0.00005, "INPUT.MIN_SIZE_TRAIN": [int(x * 0.1 * 960) for x in range(5, 21)],
        "INPUT.MAX_SIZE_TRAIN": 960, "INPUT.MIN_SIZE_TEST": 480, "INPUT.MAX_SIZE_TEST": 853,
        "INPUT.CROP.SIZE": [480, 480], "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 124}
CITYSCAPES = {**COMMON, "SOLVER.BASE_LR": 0.0001, "INPUT.MIN_SIZE_TRAIN": [int(x * 0.1 * 1024) for x in range(5, 21)],
              "INPUT.MAX_SIZE_TRAIN": 4096, "INPUT.MIN_SIZE_TEST": 1024, "INPUT.MAX_SIZE_TEST": 2048,
              "INPUT.CROP.SIZE": [512, 1024], "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 19}
MPVSS = {"SOLVER.BASE_LR": 0.00005, "MODEL.VIDEO.FROZEN_MODE": "train", "INPUT.VIDEO.SAMPLER": "pair",
         "INPUT.VIDEO.PAIR_MAX_GAP": 10, "MODEL.MPVSS.KEY_INTERVAL": 5, "MODEL.VIDEO.TRAINABLE":
         ["temporal.flow", "sem_seg_head.predictor.class_embed", "sem_seg_head.predictor.mask_embed"]}


def value(cfg, key):
    for part in key.split("."):
        cfg = cfg[part]
    return list(cfg) if isinstance(cfg, (list, tuple)) else cfg


def recipe_cases():
    for dataset, base in (("vspw", VSPW), ("cityscapes", CITYSCAPES)):
        for backbone in BACKBONES:
            per_frame = f"configs/{dataset}/mask2former/{backbone}.yaml"
            yield per_frame, {**base, "MODEL.WEIGHTS": f"output/pretrained/{IMAGENET[backbone]}",
                              "OUTPUT_DIR": f"output/{dataset}/mask2former/{backbone}"}
            swin = {"MODEL.SWIN.DROP_PATH_RATE": 0.3} if backbone.startswith("Swin") else {}
            # the release's pair draw (mapper :137-145); a Cityscapes snippet has one labelled frame
            draw = {"INPUT.VIDEO.PAIR_DRAW": "window" if dataset == "vspw" else "target"}
            yield f"configs/{dataset}/mpvss/{backbone}.yaml", {
                **base, **MPVSS, **swin, **draw,
                "MODEL.WEIGHTS": f"output/{dataset}/mask2former/{backbone}/model_final.pth"}


@pytest.mark.parametrize("config,expected", list(recipe_cases()), ids=lambda c: c if isinstance(c, str) else "")
def test_release_recipe(config, expected):
    cfg = setup_cfg(str(REPO / config))
    wrong = {k: (value(cfg, k), v) for k, v in expected.items() if value(cfg, k) != v}
    assert not wrong, f"{config}: key: (ours, release) {wrong}"


def test_release_training_scale_is_mostly_540x960():
    # VSPW frames are 480x853: short side 480 keeps them, every larger choice is capped by the long side 960
    cfg = setup_cfg(str(REPO / "configs/vspw/mpvss/R50.yaml"))
    sizes = collections.Counter(T.ResizeShortestEdge.get_output_shape(480, 853, s, cfg.INPUT.MAX_SIZE_TRAIN)
                                for s in cfg.INPUT.MIN_SIZE_TRAIN)
    assert sizes == {(480, 853): 1, (540, 960): 15}
    test_size = cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST
    assert T.ResizeShortestEdge.get_output_shape(480, 853, *test_size) == (480, 853)
    assert T.ResizeShortestEdge.get_output_shape(480, 1140, *test_size) == (359, 853)  # wider than 16:9: capped


@pytest.mark.parametrize("config", [c for c in CONFIGS if c.startswith("configs/synthetic/")])
def test_synthetic_configs_keep_the_code_defaults(config):
    cfg = setup_cfg(str(REPO / config))
    assert not cfg.SOLVER.AMP.ENABLED and cfg.DATALOADER.SAMPLE_BY == "frame"
    assert cfg.MODEL.VIDEO.FROZEN_MODE == "eval" and cfg.MODEL.ALLOW_RANDOM_INIT


@pytest.mark.parametrize("config,weights", [
    ("configs/vspw/tv3s/MiT-B1.yaml", "mit_b1.pkl"), ("configs/vspw/tv3s/MiT-B2.yaml", "mit_b2.pkl"),
    ("configs/vspw/tv3s/MiT-B5.yaml", "mit_b5.pkl"),
    ("configs/vspw/tv3s/Swin-T.yaml", "swin_tiny_patch4_window7_224_22k.pkl"),
    ("configs/vspw/tv3s/Swin-S.yaml", "swin_small_patch4_window7_224_22k.pkl"),
    ("configs/cityscapes/tv3s/MiT-B0.yaml", "mit_b0.pkl"), ("configs/cityscapes/tv3s/MiT-B1.yaml", "mit_b1.pkl"),
])
def test_tv3s_samples_by_video_from_an_imagenet_encoder(config, weights):
    cfg = setup_cfg(str(REPO / config))
    assert cfg.DATALOADER.SAMPLE_BY == "video" and not cfg.SOLVER.AMP.ENABLED
    assert cfg.MODEL.WEIGHTS == f"output/pretrained/{weights}" and not cfg.MODEL.ALLOW_RANDOM_INIT


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_mpvss_config_keeps_its_frozen_backbone_in_the_release_mode(mode):
    cfg = setup_cfg(str(REPO / "configs/vspw/mpvss/R50.yaml"),
                    ["MODEL.DEVICE", "meta", "MODEL.VIDEO.FROZEN_MODE", mode])
    with torch.device("meta"):
        model = build_model(cfg).train()
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert model.backbone.training == (mode == "train") and model.temporal.training

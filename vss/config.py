"""All configuration keys this project adds to detectron2's defaults.

`add_vss_config` is the only entry point: it adds the DeepLab keys (poly schedule,
semantic-head options that upstream Mask2Former YAMLs carry), the keys of upstream
Mask2Former's `add_maskformer2_config` with the same names and defaults (so upstream
YAMLs load unchanged), and this project's video keys.
"""
from detectron2.config import CfgNode as CN
from detectron2.projects.deeplab import add_deeplab_config


def add_maskformer2_config(cfg):
    """Upstream Mask2Former's keys, names and defaults unchanged."""
    # Dataset mapper used by upstream training scripts (kept for YAML compatibility).
    cfg.INPUT.DATASET_MAPPER_NAME = "mask_former_semantic"
    # SSD-style photometric distortion during training.
    cfg.INPUT.COLOR_AUG_SSD = False
    # Retry crops until no single class covers more than this fraction of the crop.
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0
    # Pad training images to a multiple of this (-1: no padding).
    cfg.INPUT.SIZE_DIVISIBILITY = -1

    # Weight decay on embedding parameters (queries, level embeddings).
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    # Optimizer: "ADAMW" or "SGD".
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    # Learning-rate multiplier of backbone parameters.
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1

    cfg.MODEL.MASK_FORMER = CN()
    # Loss on the predictions of every decoder layer.
    cfg.MODEL.MASK_FORMER.DEEP_SUPERVISION = True
    # Class-loss weight of the "no object" class.
    cfg.MODEL.MASK_FORMER.NO_OBJECT_WEIGHT = 0.1
    # Loss weights: classification, dice, sigmoid BCE on masks.
    cfg.MODEL.MASK_FORMER.CLASS_WEIGHT = 1.0
    cfg.MODEL.MASK_FORMER.DICE_WEIGHT = 1.0
    cfg.MODEL.MASK_FORMER.MASK_WEIGHT = 20.0
    # Attention heads of the transformer decoder AND of the pixel decoder's deformable
    # encoder (upstream reads this key for both; DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS is unused).
    cfg.MODEL.MASK_FORMER.NHEADS = 8
    cfg.MODEL.MASK_FORMER.DROPOUT = 0.1
    # Transformer decoder FFN width (the pixel decoder's encoder always uses 1024, as upstream).
    cfg.MODEL.MASK_FORMER.DIM_FEEDFORWARD = 2048
    cfg.MODEL.MASK_FORMER.ENC_LAYERS = 0
    # Number of predictions: decoder layers + 1 (the prediction from the learnable queries).
    cfg.MODEL.MASK_FORMER.DEC_LAYERS = 6
    cfg.MODEL.MASK_FORMER.PRE_NORM = False
    cfg.MODEL.MASK_FORMER.HIDDEN_DIM = 256
    cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES = 100
    # Which feature feeds the decoder ("multi_scale_pixel_decoder" for Mask2Former).
    cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE = "res5"
    # Always project decoder inputs, even when channel counts match.
    cfg.MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ = False

    cfg.MODEL.MASK_FORMER.TEST = CN()
    # Which outputs inference produces (this project uses the semantic one).
    cfg.MODEL.MASK_FORMER.TEST.SEMANTIC_ON = True
    cfg.MODEL.MASK_FORMER.TEST.INSTANCE_ON = False
    cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON = False
    # Panoptic/instance thresholds (unused by semantic inference, kept for YAMLs).
    cfg.MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD = 0.0
    cfg.MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD = 0.0
    # Crop and resize mask logits before semantic inference instead of after.
    cfg.MODEL.MASK_FORMER.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE = False
    # Images are padded to a multiple of this before the backbone.
    cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY = 32

    # Pixel decoder output (mask feature) channels.
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 256
    cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = 0
    cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME = "BasePixelDecoder"

    cfg.MODEL.SWIN = CN()
    # Swin Transformer backbone (upstream D2SwinTransformer).
    cfg.MODEL.SWIN.PRETRAIN_IMG_SIZE = 224
    cfg.MODEL.SWIN.PATCH_SIZE = 4
    cfg.MODEL.SWIN.EMBED_DIM = 96
    cfg.MODEL.SWIN.DEPTHS = [2, 2, 6, 2]
    cfg.MODEL.SWIN.NUM_HEADS = [3, 6, 12, 24]
    cfg.MODEL.SWIN.WINDOW_SIZE = 7
    cfg.MODEL.SWIN.MLP_RATIO = 4.0
    cfg.MODEL.SWIN.QKV_BIAS = True
    cfg.MODEL.SWIN.QK_SCALE = None
    cfg.MODEL.SWIN.DROP_RATE = 0.0
    cfg.MODEL.SWIN.ATTN_DROP_RATE = 0.0
    cfg.MODEL.SWIN.DROP_PATH_RATE = 0.3
    cfg.MODEL.SWIN.APE = False
    cfg.MODEL.SWIN.PATCH_NORM = True
    cfg.MODEL.SWIN.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.SWIN.USE_CHECKPOINT = False

    # Transformer decoder class (registered name).
    cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME = "MultiScaleMaskedTransformerDecoder"
    # Large-scale-jitter options of upstream COCO configs (kept for YAMLs).
    cfg.INPUT.IMAGE_SIZE = 1024
    cfg.INPUT.MIN_SCALE = 0.1
    cfg.INPUT.MAX_SCALE = 2.0
    # Multi-scale deformable-attention pixel decoder.
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS = 4
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS = 8  # unused upstream too (see NHEADS)
    # Point-sampled mask loss: points per mask and importance sampling.
    cfg.MODEL.MASK_FORMER.TRAIN_NUM_POINTS = 112 * 112
    cfg.MODEL.MASK_FORMER.OVERSAMPLE_RATIO = 3.0
    cfg.MODEL.MASK_FORMER.IMPORTANCE_SAMPLE_RATIO = 0.75


def add_video_config(cfg):
    """This project's keys for video data and evaluation."""
    cfg.INPUT.VIDEO = CN()
    # Training sample: "frame" (one frame), "pair" (key frame + later frame) or "clip".
    cfg.INPUT.VIDEO.SAMPLER = "frame"
    # Pair: the key frame is 1..PAIR_MAX_GAP frames before the labelled frame.
    cfg.INPUT.VIDEO.PAIR_MAX_GAP = 10
    # Clip: frame offsets relative to the labelled frame, target (offset 0) last.
    cfg.INPUT.VIDEO.CLIP_OFFSETS = [-9, -6, -3, 0]
    # Clip: probability of playing the video backwards (offsets negated).
    cfg.INPUT.VIDEO.REVERSE_PROB = 0.0

    cfg.TEST.VSS = CN()
    # Window lengths of the video-consistency metric (mVC_n).
    cfg.TEST.VSS.VC_WINDOWS = [8, 16]
    # Write predicted label PNGs in VSPW layout under OUTPUT_DIR/inference/<dataset>/.
    cfg.TEST.VSS.SAVE_PREDICTIONS = False


def add_vss_config(cfg):
    """Add every key vss needs to a detectron2 config (`get_cfg()`)."""
    add_deeplab_config(cfg)
    add_maskformer2_config(cfg)
    add_video_config(cfg)

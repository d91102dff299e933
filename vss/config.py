"""All configuration keys this project adds to detectron2's defaults.

`add_vss_config` is the only entry point: it adds the DeepLab keys (poly schedule,
semantic-head options that upstream Mask2Former YAMLs carry), the keys of upstream
Mask2Former's `add_maskformer2_config` with the same names and defaults (so upstream
YAMLs load unchanged), and this project's video keys.
"""
import torch
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


def add_mit_config(cfg):
    """Mix Transformer backbone (MODEL.BACKBONE.NAME "MiT") and the SegFormer decode head."""
    cfg.MODEL.MIT = CN()
    # Published variant "B0".."B5": stage widths and depths (vss.modeling.backbone.mit.MIT_VARIANTS).
    cfg.MODEL.MIT.VARIANT = "B1"
    # Stochastic depth of the last block; earlier blocks get linearly less, the first none.
    cfg.MODEL.MIT.DROP_PATH_RATE = 0.1
    # Stages returned (strides 4, 8, 16, 32).
    cfg.MODEL.MIT.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    # SegFormerHead: channels of every projected level and of the fused map.
    cfg.MODEL.SEM_SEG_HEAD.EMBED_DIM = 256
    # Cross-entropy mean of SegFormerHead and the TV3S losses: "valid" (over non-ignored pixels)
    # or "all" (over every pixel, ignored and padded ones included: mmseg 0.11's, the releases').
    cfg.MODEL.SEM_SEG_HEAD.LOSS_AVERAGE = "valid"
    # Init of the 1x1 classifiers (linear_pred, TV3S's linear_pred2): "normal" (N(0, 0.01) weights,
    # zero bias) or "pytorch" (nn.Conv2d's default: the releases', whose init_weights skips them).
    cfg.MODEL.SEM_SEG_HEAD.PREDICTOR_INIT = "normal"


def add_video_config(cfg):
    """This project's keys for video data, the solver and evaluation."""
    # Learning-rate multiplier of every non-backbone parameter (TV3S trains its head at x10).
    cfg.SOLVER.HEAD_MULTIPLIER = 1.0
    # mmcv-style paramwise rules, [[name substring, lr_mult, decay_mult], ...]: a parameter whose
    # name contains a key gets BASE_LR x lr_mult and WEIGHT_DECAY x decay_mult and no other rule
    # (longest key first, ties alphabetically, as mmcv 1.3's custom_keys); [] uses none.
    cfg.SOLVER.CUSTOM_KEYS = []

    cfg.INPUT.VIDEO = CN()
    # Training sample: "frame" (one frame), "pair" (key frame + later frame) or "clip".
    cfg.INPUT.VIDEO.SAMPLER = "frame"
    # Pair: the key frame is 1..PAIR_MAX_GAP frames before the labelled frame.
    cfg.INPUT.VIDEO.PAIR_MAX_GAP = 10
    # Pair draw: "target" (the sampled frame is the target, its key 1..PAIR_MAX_GAP before it) or
    # "window" (the MPVSS release: the record stands for its video; two labelled frames at most
    # PAIR_MAX_GAP apart, the later one the target).
    cfg.INPUT.VIDEO.PAIR_DRAW = "target"
    # Clip: frame offsets relative to the labelled frame, target (offset 0) last.
    cfg.INPUT.VIDEO.CLIP_OFFSETS = [-9, -6, -3, 0]
    # Clip: probability of playing the video backwards (offsets negated).
    cfg.INPUT.VIDEO.REVERSE_PROB = 0.0
    # Clip targets: "all" (every labelled frame; frames before/after the video are clamped) or
    # "full_context" (the TV3S release: the sampled record stands for its video, whose target is
    # drawn among the labelled frames with every clip frame present in the drawn direction).
    cfg.INPUT.VIDEO.CLIP_TARGETS = "all"
    # Draw the colour distortion (INPUT.COLOR_AUG_SSD) anew for every frame of a pair or clip.
    cfg.INPUT.VIDEO.COLOR_AUG_PER_FRAME = False

    # Training resize: "shortest_edge" (MIN_SIZE_TRAIN, MAX_SIZE_TRAIN, MIN_SIZE_TRAIN_SAMPLING) or
    # "ratio_range" (mmseg's Resize: the (long, short) box SCALE_TRAIN x a ratio in RATIO_RANGE_TRAIN).
    cfg.INPUT.RESIZE_TRAIN = "shortest_edge"
    cfg.INPUT.SCALE_TRAIN = (853, 480)
    cfg.INPUT.RATIO_RANGE_TRAIN = (0.5, 2.0)
    # Test resize: "shortest_edge" (MIN_SIZE_TEST, capped by MAX_SIZE_TEST) or "aligned" (the same
    # rescale as mmcv, short side <= MIN_SIZE_TEST, long <= MAX_SIZE_TEST, then stretched to a
    # multiple of ALIGN_SIZE_TEST: the TV3S release's AlignedResize).
    cfg.INPUT.RESIZE_TEST = "shortest_edge"
    cfg.INPUT.ALIGN_SIZE_TEST = 32
    # Value of the training frames' padding (SIZE_DIVISIBILITY, PAD_TO_CROP): "black" (0) or "mean"
    # (MODEL.PIXEL_MEAN, 0 after normalisation, as mmseg pads normalised images with 0).
    cfg.INPUT.PAD_VALUE = "black"
    # Pad training frames up to INPUT.CROP.SIZE ("absolute" crops), as mmseg's Pad(size=crop_size).
    cfg.INPUT.PAD_TO_CROP = False
    # Training draws: "frame" (uniform over the usable target frames) or "video" (a video
    # uniformly, then one of its usable target frames uniformly; both releases' sampler).
    cfg.DATALOADER.SAMPLE_BY = "frame"

    # Datasets in VSPW layout that setup (vss.engine.setup_cfg) registers, as [name, root, split]
    # triples (root holds classes.json or classes.txt; see datasets/README.md); name them in
    # DATASETS.TRAIN / DATASETS.TEST.
    cfg.DATASETS.FOLDERS = []

    cfg.TEST.VSS = CN()
    # Window lengths of the video-consistency metric (mVC_n).
    cfg.TEST.VSS.VC_WINDOWS = [8, 16]
    # Write predicted label PNGs (0-based train ids, as VSPW's official scripts read them)
    # under OUTPUT_DIR/inference/<dataset>/<video>/<frame>.png.
    cfg.TEST.VSS.SAVE_PREDICTIONS = False
    # Classes mIoU averages over: "gt" (present in the ground truth: VSPW's script) or "gt_or_pred"
    # (in the ground truth or the prediction: the MPVSS release's evaluator,
    # O: mask2former/evaluation/vspw_seg_evaluation.py:147-151).
    cfg.TEST.VSS.MIOU_CLASSES = "gt"
    # Report the compute spent: frames of each kind, key-frame share, GFLOPs/frame (vss.evaluation.compute).
    cfg.TEST.VSS.REPORT_COMPUTE = True


def add_checkpoint_config(cfg):
    """Loading MODEL.WEIGHTS (vss.engine.checkpoint)."""
    # Load whatever fits from MODEL.WEIGHTS, warning about the rest, instead of failing when the
    # checkpoint misses weights the model does not declare optional, has keys the model lacks
    # or tensors of other shapes (e.g. fine-tuning on another number of classes).
    cfg.MODEL.WEIGHTS_ALLOW_PARTIAL = False
    # Training may start from random weights when MODEL.WEIGHTS is empty; the VSPW/Cityscapes
    # configs set False, so that a forgotten ImageNet checkpoint is an error (vss.engine.weights).
    cfg.MODEL.ALLOW_RANDOM_INIT = True
    # Read a .pkl MODEL.WEIGHTS with plain pickle, which runs any code the file names; otherwise
    # only containers, numbers, strings and numpy arrays are admitted (vss.engine.safe_pickle).
    cfg.MODEL.WEIGHTS_TRUSTED = False


def add_video_model_config(cfg):
    """Keys of the video meta-architecture (VideoSegmentor)."""
    cfg.MODEL.VIDEO = CN()
    # Temporal head (TEMPORAL_HEAD_REGISTRY): how frames of a video relate.
    cfg.MODEL.VIDEO.TEMPORAL_HEAD = "MaskPropagation"
    # Videos whose inference state is kept at once (frames of this many videos may interleave).
    cfg.MODEL.VIDEO.MAX_OPEN_VIDEOS = 2
    # Name prefixes of the parameters to train (the others frozen, their modules in
    # FROZEN_MODE); empty trains everything.
    cfg.MODEL.VIDEO.TRAINABLE = []
    # Mode of the frozen modules during training: "eval" (BN running statistics, no dropout or
    # drop path) or "train" (as the rest; the MPVSS release, whose frozen SyncBN uses batch statistics).
    cfg.MODEL.VIDEO.FROZEN_MODE = "eval"


def add_mpvss_config(cfg):
    """MPVSS: mask propagation with query-based flow."""
    cfg.MODEL.MPVSS = CN()
    # A key frame (full Mask2Former) every KEY_INTERVAL frames; the others are propagated.
    # With KEY_POLICY "adaptive": the longest a key frame is propagated.
    cfg.MODEL.MPVSS.KEY_INTERVAL = 5
    # "fixed" (the paper's) or "adaptive": also a key frame right after a propagated frame
    # whose confidence fell below KEY_MIN_CONFIDENCE_RATIO x the key frame's.
    cfg.MODEL.MPVSS.KEY_POLICY = "fixed"
    # Adaptive policy threshold, in (0, 1] (confidence = mean top-class share of the scores).
    # Warped masks stay about as confident as the key frame's (0.99+ of it on the synthetic
    # set), so useful values are close to 1; 0.9 rarely fires. See projects/MPVSS (measured).
    cfg.MODEL.MPVSS.KEY_MIN_CONFIDENCE_RATIO = 0.9
    # "flow": warp key masks with the flow module (variant: MODEL.MOTION.FLOW_TYPE);
    # "copy": reuse them unchanged (the paper's Copy baseline; no flow module is built).
    cfg.MODEL.MPVSS.PROPAGATION = "flow"
    # How the flow moves the key masks: "exact" (pixel coordinates; zero flow = no change) or
    # "release" (the release's grid_sample, normalised by W with align_corners=True: samples at
    # (x + dx)(W - 1)/W, O: mask2former/mpvss.py:182-185); its checkpoints were trained with it.
    cfg.MODEL.MPVSS.WARP = "exact"

    # The flow module (official names: MODEL.MOTION; defaults = the official effective config).
    cfg.MODEL.MOTION = CN()
    # Flow variant (paper Table 3b): "query" (query flow fused with pixel flow: the method),
    # "pixel" (FlowNetS only: "Optical flow"), "query_learned" (query flow only),
    # "query_random" (query flow only, flow queries not from the key frame),
    # "query_for_pf" (pixel flow of the query-refined motion features). See vss/modeling/mpvss/flow.py.
    cfg.MODEL.MOTION.FLOW_TYPE = "query"
    # Flow maps per frame: one per key-frame query (= MODEL.MASK_FORMER.NUM_OBJECT_QUERIES).
    cfg.MODEL.MOTION.NUM_QUERIES = 100
    # Motion input = [current, key] RGB / FLOW_IMG_NORM_STD - FLOW_IMG_NORM_MEAN (same for both frames).
    cfg.MODEL.MOTION.FLOW_IMG_NORM_MEAN = [0.411, 0.432, 0.450]
    cfg.MODEL.MOTION.FLOW_IMG_NORM_STD = [255.0, 255.0, 255.0]
    # The normalised input is zero-padded to a multiple of this.
    cfg.MODEL.MOTION.SIZE_DIVISIBILITY = 32
    # Frames are resized by this factor before the motion encoder (flow grid: 1/8 of the frame at 0.5).
    cfg.MODEL.MOTION.IMG_SCALE_FACTOR = 0.5
    # Motion encoder (FlowNetS), per block conv1..conv6: output channels, first conv's kernel
    # (the others are 3x3), number of convs.
    cfg.MODEL.MOTION.ENCODER_CHANNELS = [64, 128, 256, 512, 512, 1024]
    cfg.MODEL.MOTION.ENCODER_KERNEL_SIZE = [7, 5, 5, 3, 3, 3]
    cfg.MODEL.MOTION.ENCODER_NUM_CONVS = [1, 1, 2, 2, 2, 2]
    # Motion decoder width (must equal MODEL.MASK_FORMER.HIDDEN_DIM when key queries are read).
    cfg.MODEL.MOTION.HIDDEN_DIM = 256
    # Attention heads of the motion decoder.
    cfg.MODEL.MOTION.NHEADS = 8
    # FFN width of the motion decoder.
    cfg.MODEL.MOTION.DIM_FEEDFORWARD = 2048
    # Motion decoder layers (the paper's S=3 stages x L=3 blocks); layer i uses level i % 3.
    cfg.MODEL.MOTION.DECODER_LAYERS = 9
    # Pre-norm instead of post-norm transformer layers.
    cfg.MODEL.MOTION.PRE_NORM = False
    # The pixel flow is multiplied by this.
    cfg.MODEL.MOTION.FLOW_SCALE_FACTOR = 1.0
    # Start of the fusion conv over [pixel flow, query flow]: "official" (weight 0, bias 1:
    # flow (1, 1) grid cells everywhere) or "pass_through" (starts as the pixel flow, or the
    # query flow where there is no pixel flow). See projects/MPVSS for the measured comparison.
    cfg.MODEL.MOTION.FUSION_INIT = "official"
    # Pretrained flow-module weights, loaded after MODEL.WEIGHTS as a separate logged step
    # (tensors `flow.*` of a FlowNetS pretraining run or `temporal.flow.*` of
    # tools/convert_flownets.py / an MPVSS checkpoint, or `motion.*` of an official MPVSS
    # checkpoint, wherever shapes agree); "" loads none.
    cfg.MODEL.MOTION.WEIGHTS = ""


def add_flownets_config(cfg):
    """FlowNetS pretraining of the motion encoder (meta-architecture "FlowNetS")."""
    cfg.MODEL.FLOWNETS = CN()
    # Multi-scale EPE weights of the flows at 1/8, 1/16, ..., 1/128 of the frame (FlowNet's).
    cfg.MODEL.FLOWNETS.LOSS_WEIGHTS = [0.005, 0.01, 0.02, 0.08, 0.32]
    # The loss compares flows in units of DIV_FLOW motion-input pixels, as FlowNet's training.
    cfg.MODEL.FLOWNETS.DIV_FLOW = 20.0


def add_tv3s_config(cfg):
    """TV3S: temporal state space sharing."""
    cfg.MODEL.TV3S = CN()
    # Side of the square windows the Mamba layers scan (one window over all frames = one sequence).
    cfg.MODEL.TV3S.WINDOW_SIZE = 20
    # Offset of the shifted layers' windows, 0 <= SHIFT < WINDOW_SIZE (every odd layer).
    cfg.MODEL.TV3S.SHIFT = 10
    # TV3S blocks, each an unshifted and a shifted Mamba layer.
    cfg.MODEL.TV3S.NUM_BLOCKS = 4
    # Mamba: SSM state size per channel.
    cfg.MODEL.TV3S.D_STATE = 16
    # Mamba: width of the causal depthwise conv.
    cfg.MODEL.TV3S.D_CONV = 4
    # Mamba: inner width = EXPAND x MODEL.SEM_SEG_HEAD.EMBED_DIM.
    cfg.MODEL.TV3S.EXPAND = 2
    # Stochastic depth of the last Mamba layer's output (earlier layers get linearly less).
    cfg.MODEL.TV3S.DROP_PATH = 0.1
    # Divide every Mamba out_proj's initial weights by sqrt(layers) (mamba-ssm's pre-norm residual
    # rescale); the release does not (its head never applies that init).
    cfg.MODEL.TV3S.RESCALE_OUT_PROJ = True
    # Dropout2d before the temporal classifier (linear_pred2).
    cfg.MODEL.TV3S.DROPOUT = 0.1
    # Loss weight of the per-frame prediction (on the AUX_LOSS_FRAMES frames).
    cfg.MODEL.TV3S.AUX_WEIGHT = 0.5
    # Clip frames whose per-frame prediction is supervised: "all" (the VSPW release) or "last"
    # (the Cityscapes release's TV3SHead_shift_city, where only the target frame is labelled).
    cfg.MODEL.TV3S.AUX_LOSS_FRAMES = "all"
    # Loss weight of the temporal prediction.
    cfg.MODEL.TV3S.TEMPORAL_WEIGHT = 1.0
    # Clip frames whose temporal prediction is supervised: "last" (the release: frame t only)
    # or "all" (every frame's prediction from itself and the clip's earlier frames, which is
    # what streaming inference outputs for every frame; 4x the temporal supervision per clip).
    cfg.MODEL.TV3S.TEMPORAL_LOSS_FRAMES = "last"
    # "stream": one frame at a time with carried scan states; "clip": the release's test, each frame
    # from a fresh clip of itself and the frames at INPUT.VIDEO.CLIP_OFFSETS before it, a video's
    # first frames as the release does them (vss.modeling.tv3s.clips.release_test_clip); "frame": the
    # paper's single-frame protocol, every frame a streaming step from a fresh state (a video of its own).
    cfg.MODEL.TV3S.INFERENCE = "stream"


def add_vss_config(cfg):
    """Add every key vss needs to a detectron2 config (`get_cfg()`)."""
    add_deeplab_config(cfg)
    add_maskformer2_config(cfg)
    add_mit_config(cfg)
    add_video_config(cfg)
    add_checkpoint_config(cfg)
    add_video_model_config(cfg)
    add_mpvss_config(cfg)
    add_flownets_config(cfg)
    add_tv3s_config(cfg)
    # the best device present (detectron2's default is "cuda", which fails without CUDA)
    cfg.MODEL.DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

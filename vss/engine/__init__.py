from .checkpoint import VSSCheckpointer
from .launch import create_ddp_model, launch
from .loading import load_weights
from .optimizer import build_optimizer
from .predictor import VideoPredictor
from .setup import load_cfg, prepare_cfg, setup_cfg
from .trainer import Trainer
from .runs import METRICS, evaluate, learning_curve, load_model, metric_names, train_once, video_gflops
from .weights import check_weights
from .temporal_contribution import single_frame_opts, temporal_contribution

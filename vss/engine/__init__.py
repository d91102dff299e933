from .checkpoint import VSSCheckpointer
from .optimizer import build_optimizer
from .predictor import VideoPredictor
from .setup import load_cfg, prepare_cfg, setup_cfg
from .trainer import Trainer
from .weights import check_weights

from .checkpoint import VSSCheckpointer
from .optimizer import build_optimizer
from .predictor import VideoPredictor
from .setup import setup_cfg
from .trainer import Trainer

from .optimizer import build_optimizer
from .setup import setup_cfg
from .trainer import Trainer

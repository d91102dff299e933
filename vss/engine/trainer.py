"""Trainer: detectron2's DefaultTrainer with this project's loaders, evaluator and solver."""
import os
from unittest import mock

from detectron2.engine import DefaultTrainer, defaults
from detectron2.projects.deeplab import build_lr_scheduler

from ..data.build import build_video_train_loader
from ..data.video import build_video_test_loader
from ..evaluation import VSSEvaluator
from ..modeling.postprocess import labels_only
from .launch import create_ddp_model
from .optimizer import build_optimizer


class Trainer(DefaultTrainer):
    def __init__(self, cfg):
        # DefaultTrainer wraps the model with detectron2's create_ddp_model, which gives DDP
        # device_ids that it rejects for a CPU model: ours leaves them out for CPU processes.
        with mock.patch.object(defaults, "create_ddp_model", create_ddp_model):
            super().__init__(cfg)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_video_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_video_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return VSSEvaluator(
            dataset_name,
            distributed=True,
            output_dir=output_folder,
            vc_windows=tuple(cfg.TEST.VSS.VC_WINDOWS),
            save_predictions=cfg.TEST.VSS.SAVE_PREDICTIONS,
        )

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        # The evaluators need labels only: the models skip the full-size score maps.
        with labels_only():
            return super().test(cfg, model, evaluators)

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_lr_scheduler(cfg, optimizer)

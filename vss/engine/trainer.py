"""Trainer: detectron2's DefaultTrainer with this project's loaders, evaluator and solver."""
import os

from detectron2.engine import DefaultTrainer
from detectron2.projects.deeplab import build_lr_scheduler

from ..data.build import build_video_train_loader
from ..data.flow_pairs import build_flow_test_loader, build_flow_train_loader, is_flow_dataset
from ..data.video import build_video_test_loader
from ..evaluation import FlowEvaluator, VSSEvaluator
from ..modeling.mpvss.motion_weights import load_motion_weights
from .optimizer import build_optimizer


class Trainer(DefaultTrainer):
    """Flow-pair datasets (FlowNetS pretraining) get pair loaders and FlowEvaluator; video
    datasets the video loaders and VSSEvaluator."""

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume)
        if not (resume and self.checkpointer.has_checkpoint()):  # a resumed run has them already
            load_motion_weights(self.model, self.cfg.MODEL.MOTION.WEIGHTS)

    @classmethod
    def build_train_loader(cls, cfg):
        if is_flow_dataset(cfg.DATASETS.TRAIN):
            return build_flow_train_loader(cfg)
        return build_video_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        if is_flow_dataset([dataset_name]):
            return build_flow_test_loader(cfg, dataset_name)
        return build_video_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if is_flow_dataset([dataset_name]):
            return FlowEvaluator(dataset_name, distributed=True)
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return VSSEvaluator(
            dataset_name,
            distributed=True,
            output_dir=output_folder,
            vc_windows=tuple(cfg.TEST.VSS.VC_WINDOWS),
            save_predictions=cfg.TEST.VSS.SAVE_PREDICTIONS,
        )

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_lr_scheduler(cfg, optimizer)

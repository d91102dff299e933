"""Trainer: detectron2's DefaultTrainer with this project's loaders, evaluator and solver, and
checkpoints that resume exactly.

A checkpoint holds, besides the weights and the scheduler (DefaultTrainer's), the optimizer and
AMP gradient-scaler state, the training loader's seed and position, and the python / numpy /
torch RNG states of the training process, all as they were after the checkpoint's iteration.
Samples are seeded by their place in the stream (vss.data.train_loader), so the data-loading
workers hold no state of their own. An interrupted run resumed with `--resume` therefore ends
with the weights of an uninterrupted one.

Every evaluation during training (TEST.EVAL_PERIOD and the final one) is appended to
OUTPUT_DIR/evaluations.jsonl as {"iter": iterations done, "results": ...}: a learning curve
that, unlike metrics.json, keeps evaluations closer together than the log writer's period.
"""
import json
import logging
import os
import random
import weakref

import numpy as np
import torch
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase
from detectron2.engine.hooks import EvalHook
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from detectron2.projects.deeplab import build_lr_scheduler

from ..data.build import build_video_train_loader
from ..data.flow_pairs import build_flow_test_loader, build_flow_train_loader, is_flow_dataset
from ..data.video import build_video_test_loader
from ..evaluation import FlowEvaluator, VSSEvaluator, measuring
from ..modeling.postprocess import labels_only
from .launch import create_ddp_model
from .loading import build_checkpointer, load_weights
from .optimizer import build_optimizer

logger = logging.getLogger(__name__)

EVALUATIONS = "evaluations.jsonl"

# Scheduler state that is progress, restored from a checkpoint. The rest (max_iters, warmup,
# power) is the schedule, always the config's: a resumed run may change SOLVER.MAX_ITER.
SCHEDULER_PROGRESS = ("last_epoch", "_step_count", "_last_lr")


def rng_states():
    """The global RNG states, in types that torch.load(weights_only=True) reads back."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states):
    random.setstate(states["python"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def without_amp_off_cuda(cfg):
    """`cfg`, or a copy with SOLVER.AMP.ENABLED False when the model does not run on CUDA.

    detectron2's AMPTrainer asserts CUDA; the configs of releases that trained with AMP keep it
    on, and train in float32 elsewhere.
    """
    if not cfg.SOLVER.AMP.ENABLED or cfg.MODEL.DEVICE.startswith("cuda"):
        return cfg
    logger.info("SOLVER.AMP.ENABLED is True but the model runs on %s: training in float32 "
                "(AMP needs CUDA)", cfg.MODEL.DEVICE)
    cfg = cfg.clone()
    cfg.defrost()
    cfg.SOLVER.AMP.ENABLED = False
    cfg.freeze()
    return cfg


class Trainer(DefaultTrainer):
    """Flow-pair datasets (FlowNetS pretraining) get pair loaders and FlowEvaluator; video
    datasets the video loaders and VSSEvaluator. SOLVER.AMP.ENABLED applies on CUDA only."""

    def __init__(self, cfg):
        # detectron2 0.6's DefaultTrainer.__init__, step by step, with this project's create_ddp_model
        # (detectron2's gives DDP device_ids, which it rejects for a CPU model) and checkpointer:
        # DefaultTrainer has no hook for either, so its attributes (_trainer, and _last_eval_results
        # below, which its train() reads) are set here as its __init__ sets them; recheck on an upgrade.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):  # setup_logger not called for d2
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(without_amp_off_cuda(cfg), comm.get_world_size())
        self._rng_to_restore = None
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, broadcast_buffers=False)
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = build_checkpointer(model, cfg, training=True, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def build_hooks(self):
        # DefaultTrainer's evaluation hook, with a function that also records each evaluation
        return [EvalHook(self.cfg.TEST.EVAL_PERIOD, self.evaluate_and_record) if isinstance(hook, EvalHook) else hook
                for hook in super().build_hooks()]

    def evaluate_and_record(self):
        """DefaultTrainer's evaluation during training (its results are what train() returns and
        checks against TEST.EXPECTED_RESULTS), appended to OUTPUT_DIR/evaluations.jsonl."""
        results = self._last_eval_results = self.test(self.cfg, self.model)
        if comm.is_main_process():
            # after the last step trainer.iter is MAX_ITER, after step i it is i - 1
            done = min(self.iter + 1, self.max_iter)
            with open(os.path.join(self.cfg.OUTPUT_DIR, EVALUATIONS), "a") as f:
                f.write(json.dumps({"iter": done, "results": results}) + "\n")
        return results

    def state_dict(self):
        ret = super().state_dict()  # iteration, scheduler
        ret["_trainer"] = self._trainer.state_dict()  # optimizer, AMP gradient scaler
        ret["data"] = self.data_loader.state_dict()
        ret["rng"] = rng_states()
        ret["max_iter"] = self.max_iter
        return ret

    def load_state_dict(self, state_dict):
        lacking = [k for k in ("_trainer", "data", "rng") if k not in state_dict]
        if lacking:
            logger.warning("the checkpoint holds no %s state (written before exact resume): resuming "
                           "anyway, but the run will differ from an uninterrupted one", ", ".join(lacking))
        hooks = dict(state_dict.get("hooks", {}))
        saved_schedule = hooks.get("LRScheduler", {})
        if saved_schedule:
            fresh = self.scheduler.state_dict()
            hooks["LRScheduler"] = {**fresh, **{k: saved_schedule[k] for k in SCHEDULER_PROGRESS if k in saved_schedule}}
        super().load_state_dict({**state_dict, "hooks": hooks})
        if "_trainer" in state_dict:
            saved = state_dict["_trainer"]
            if isinstance(self._trainer, AMPTrainer) and "grad_scaler" not in saved:
                # written by a float32 run (e.g. on the CPU): the AMP gradient scaler starts afresh
                logger.info("the checkpoint holds no AMP gradient-scaler state: it starts afresh")
                SimpleTrainer.load_state_dict(self._trainer, saved)
            else:
                self._trainer.load_state_dict(saved)
        if "data" in state_dict:
            self.data_loader.load_state_dict(state_dict["data"])
        self._rng_to_restore = state_dict.get("rng")
        planned = state_dict.get("max_iter", saved_schedule.get("max_iters"))
        if planned is not None and planned != self.max_iter:
            logger.info("resuming after iteration %d of a run planned for %d iterations: continuing to "
                        "SOLVER.MAX_ITER %d, with the learning-rate schedule recomputed for %d iterations",
                        self.iter, planned, self.max_iter, self.max_iter)
            # the optimizer holds the old schedule's learning rate: set this iteration's anew
            self.scheduler.last_epoch -= 1
            self.scheduler.step()

    def before_train(self):
        super().before_train()
        if self.start_iter == 0 and comm.is_main_process():  # a new run: a new learning curve
            path = os.path.join(self.cfg.OUTPUT_DIR, EVALUATIONS)
            if os.path.exists(path):
                os.remove(path)
        # last, right before the first step: nothing between here and there draws random numbers
        if self._rng_to_restore is not None:
            set_rng_states(self._rng_to_restore)
            self._rng_to_restore = None

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        # An evaluation during training (TEST.EVAL_PERIOD) must not move the training RNGs: a run
        # resumed from the checkpoint written just before it does not replay it.
        states = rng_states()
        try:
            # The evaluators need labels only: the models skip the full-size score maps. They
            # report the compute the model spends (vss.evaluation.compute).
            with labels_only(), measuring(model):
                return super().test(cfg, model, evaluators)
        finally:
            set_rng_states(states)

    def resume_or_load(self, resume=True):
        """DefaultTrainer's, through `load_weights`: MODEL.WEIGHTS (and MODEL.MOTION.WEIGHTS) for a new
        run, the last checkpoint of OUTPUT_DIR for a resumed one."""
        load_weights(self.model, self.cfg, training=True, resume=resume, checkpointer=self.checkpointer)
        if resume and self.checkpointer.has_checkpoint():
            # the checkpoint holds the iteration just finished
            self.start_iter = self.iter + 1

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
            miou_classes=cfg.TEST.VSS.MIOU_CLASSES,
            report_compute=cfg.TEST.VSS.REPORT_COMPUTE,
        )

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_lr_scheduler(cfg, optimizer)

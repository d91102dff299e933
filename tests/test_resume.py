"""Exact resume: the training loader's position, the trainer's state, Ctrl-C and --resume."""
import logging
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from detectron2.engine import DefaultTrainer

from vss.data.synthetic import generate
from vss.data.train_loader import ResumableTrainLoader
from vss.engine.trainer import Trainer, rng_states, set_rng_states

from conftest import REPO


def noisy_mapper(record):
    """Uses all three global RNGs, as augmentations do."""
    return {"id": record["id"], "width": record["width"], "height": record["height"],
            "draw": (random.random(), float(np.random.rand()), float(torch.rand(())))}


# Landscape and portrait records, so that aspect-ratio grouping leaves samples pending.
RECORDS = [{"id": i, "width": 8 if i % 3 else 4, "height": 6} for i in range(7)]


def batches(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


@pytest.mark.parametrize("grouping", [True, False])
def test_loader_resumes_where_it_stopped(grouping):
    def loader(workers):
        return ResumableTrainLoader(RECORDS, noisy_mapper, 2, seed=11, num_workers=workers,
                                    aspect_ratio_grouping=grouping)

    uninterrupted = batches(loader(0), 12)
    first, it = loader(2), None
    for k in range(1, 7):  # stop, with grouping, where samples are read but not yet batched
        it = it or iter(first)
        assert next(it) == uninterrupted[k - 1]  # workers change nothing
        state = first.state_dict()
        if not grouping or any(state["pending"]):
            break
    assert state["next_place"] == 2 * k + sum(map(len, state["pending"])) and state["seed"] == 11
    assert grouping == any(state["pending"])
    resumed = loader(0)
    resumed.load_state_dict(state)
    assert batches(resumed, 12 - k) == uninterrupted[k:]
    # several epochs of 7 records: every record once per epoch, in a new order
    ids = [s["id"] for batch in uninterrupted for s in batch]
    if not grouping:
        assert sorted(ids[:7]) == sorted(ids[7:14]) == list(range(7)) and ids[:7] != ids[7:14]


def test_loader_leaves_the_global_rngs_alone():
    states = rng_states()
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())))
    set_rng_states(states)
    batches(ResumableTrainLoader(RECORDS, noisy_mapper, 2, seed=3), 3)
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected


def test_loader_state_with_other_settings(caplog):
    loader = ResumableTrainLoader(RECORDS, noisy_mapper, 3, seed=3)
    it = iter(loader)
    for _ in range(3):
        next(it)
    state = loader.state_dict()
    with pytest.raises(RuntimeError, match="before its first batch"):
        loader.load_state_dict(state)
    # a smaller batch: the pending samples come first, then the stream goes on
    pending = sorted(p for places in state["pending"] for p in places)
    assert pending  # the case worth testing
    smaller = ResumableTrainLoader(RECORDS, noisy_mapper, 1, seed=0)
    smaller.load_state_dict(state)
    places = [smaller.next_place + i for i in range(3)]
    expected = [[smaller.stream.sample(p)] for p in pending + places][:3]
    assert batches(smaller, 3) == expected
    # another number of processes: on from the same number of samples, with a warning
    two = ResumableTrainLoader(RECORDS, noisy_mapper, 3, seed=0, rank=1, world_size=2)
    with caplog.at_level(logging.WARNING, logger="vss.data.train_loader"):
        two.load_state_dict(state)
    assert "for 1 processes, this run has 2" in caplog.text
    assert two.next_place == -(-state["next_place"] // 2) and two.stream.seed == 3 and two.buckets == ([], [])


def test_rng_states_survive_a_weights_only_load(tmp_path):
    states = rng_states()
    torch.save(states, tmp_path / "rng.pth")
    expected = (random.random(), float(np.random.rand()), np.random.randn(), float(torch.rand(())))
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    set_rng_states(torch.load(tmp_path / "rng.pth", weights_only=True))
    assert (random.random(), float(np.random.rand()), np.random.randn(), float(torch.rand(()))) == expected


def test_evaluation_during_training_leaves_the_training_rngs_alone(monkeypatch):
    def evaluate(cls, cfg, model, evaluators=None):  # as a test loader's workers and dropout would
        random.random(), np.random.rand(), torch.rand(3)
        return {"sem_seg": {"mIoU": 50.0}}

    monkeypatch.setattr(DefaultTrainer, "test", classmethod(evaluate))
    states = rng_states()
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())))
    set_rng_states(states)
    assert Trainer.test(None, None) == {"sem_seg": {"mIoU": 50.0}}
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected


# --- train_net.py, interrupted and resumed ---------------------------------------------------

# A tiny Mask2Former on 32x32 crops of 48x64 frames; checkpoints every 4 iterations.
TINY = ["INPUT.MIN_SIZE_TRAIN", "(48,)", "INPUT.CROP.SIZE", "(32,32)", "SOLVER.IMS_PER_BATCH", "2",
        "SOLVER.CHECKPOINT_PERIOD", "4", "SOLVER.WARMUP_ITERS", "2", "SEED", "7",
        "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "64", "DATASETS.TEST", "()"]


@pytest.fixture(scope="module")
def datasets_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    generate(str(root / "synthetic_vss"), train_videos=2, val_videos=1, frames=4, height=48, width=64)
    return root


def train_net(datasets_root, output_dir, *opts, resume=False):
    """Starts train_net.py in its own process group, as a terminal runs it; output to a file
    (a pipe nobody reads while the test waits would fill up and stall it)."""
    env = {**os.environ, "DETECTRON2_DATASETS": str(datasets_root), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, str(REPO / "train_net.py"), "--config-file",
            str(REPO / "configs" / "synthetic" / "mask2former_tiny.yaml"), *(["--resume"] if resume else []),
            *TINY, *opts, "OUTPUT_DIR", str(output_dir)]
    os.makedirs(output_dir, exist_ok=True)
    with open(output_dir / f"console{'_resumed' if resume else ''}.txt", "w") as log:
        # SIGINT back to its default, as under a terminal: a test run started in the background by
        # a shell without job control inherits SIGINT ignored, and Ctrl-C would never arrive
        proc = subprocess.Popen(args, cwd=REPO, env=env, start_new_session=True, stdout=log,
                                stderr=subprocess.STDOUT,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    proc.log = log.name
    return proc


def finish(proc, timeout=300, ok=True):
    proc.wait(timeout=timeout)
    with open(proc.log) as f:
        out = f.read()
    assert (proc.returncode == 0) == ok, out[-3000:]
    return out


def final_weights(output_dir):
    return torch.load(output_dir / "model_final.pth")["model"]


def max_difference(a, b):
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.mark.slow
def test_ctrl_c_then_resume_equals_an_uninterrupted_run(datasets_root, tmp_path):
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    reference = train_net(datasets_root, straight, "SOLVER.MAX_ITER", "16", "DATALOADER.NUM_WORKERS", "2")
    victim = train_net(datasets_root, interrupted, "SOLVER.MAX_ITER", "16", "DATALOADER.NUM_WORKERS", "2")
    pointer = interrupted / "last_checkpoint"
    deadline = time.time() + 240
    while not pointer.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(victim.pid, signal.SIGINT)  # Ctrl-C: the whole process group, data workers included
    assert "KeyboardInterrupt" in finish(victim, ok=False)
    assert not (interrupted / "model_final.pth").exists()
    finish(reference)

    checkpoint = pointer.read_text()
    saved = torch.load(interrupted / checkpoint)["trainer"]
    assert len(saved["_trainer"]["optimizer"]["state"]) > 100  # AdamW moments of every parameter
    assert saved["data"]["next_place"] == 2 * (saved["iteration"] + 1)
    # resumed without data workers: the samples do not depend on them
    out = finish(train_net(datasets_root, interrupted, "SOLVER.MAX_ITER", "16", "DATALOADER.NUM_WORKERS", "0",
                           resume=True))
    assert f"Starting training from iteration {saved['iteration'] + 1}" in out
    assert max_difference(final_weights(interrupted), final_weights(straight)) <= 1e-6


@pytest.mark.slow
def test_resume_with_a_larger_max_iter_continues_on_a_recomputed_schedule(datasets_root, tmp_path):
    out_dir = tmp_path / "run"
    finish(train_net(datasets_root, out_dir, "SOLVER.MAX_ITER", "4", "DATALOADER.NUM_WORKERS", "0"))
    # the poly schedule of the 4-iteration run ends at 0 (and failed with a math domain error past it)
    out = finish(train_net(datasets_root, out_dir, "SOLVER.MAX_ITER", "12", "DATALOADER.NUM_WORKERS", "0",
                           resume=True))
    assert "Starting training from iteration 4" in out
    assert ("resuming after iteration 3 of a run planned for 4 iterations: continuing to SOLVER.MAX_ITER 12, "
            "with the learning-rate schedule recomputed for 12 iterations") in out
    state = torch.load(out_dir / "model_0000007.pth")["trainer"]
    assert state["iteration"] == 7 and state["max_iter"] == 12
    assert state["hooks"]["LRScheduler"]["max_iters"] == 12 and state["hooks"]["LRScheduler"]["last_epoch"] == 8
    base_lr = 0.0005  # mask2former_tiny.yaml, BACKBONE_MULTIPLIER 1: every group
    lrs = [group["lr"] for group in state["_trainer"]["optimizer"]["param_groups"]]
    assert lrs == pytest.approx([base_lr * (1 - 8 / 12) ** 0.9] * len(lrs), rel=1e-12)
    assert torch.load(out_dir / "model_final.pth")["trainer"]["iteration"] == 11

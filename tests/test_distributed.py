"""Multi-process runs for real: two CPU processes on gloo through vss.engine.launch, against one.

One job (below) trains a tiny SegFormer for one step with the project's Trainer (DDP on the
CPU) and evaluates fixed weights with Trainer.test (videos split across ranks, results
gathered). It runs once on 2 processes and once in this process; the two must agree.
"""
import json
import math

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from torch import nn

from vss.data.datasets.synthetic import SYNTHETIC_CLASSES, SYNTHETIC_COLORS
from vss.data.datasets.vspw import register_vspw_layout
from vss.data.synthetic import generate
from vss.engine import Trainer, launch, setup_cfg

from conftest import REPO

CONFIG = str(REPO / "configs" / "synthetic" / "segformer_tiny.yaml")
HEIGHT, WIDTH = 32, 48
TRAIN, VAL = "distributed_test_train", "distributed_test_val"


def _cfg(output_dir, weights=""):
    # Every random draw off: no augmentation, drop path or dropout (see _job), so the two runs
    # see the same numbers and only the process split differs. SGD with a large rate: a
    # gradient summed instead of averaged would move the weights visibly (Adam's first step
    # would hide the scale).
    return setup_cfg(CONFIG, [
        "MODEL.DEVICE", "cpu", "DATASETS.TRAIN", (TRAIN,), "DATASETS.TEST", (VAL,),
        "INPUT.MIN_SIZE_TRAIN", (HEIGHT,), "INPUT.MIN_SIZE_TEST", HEIGHT, "INPUT.CROP.ENABLED", False,
        "INPUT.COLOR_AUG_SSD", False, "INPUT.RANDOM_FLIP", "none", "MODEL.MIT.DROP_PATH_RATE", 0.0,
        "SOLVER.OPTIMIZER", "SGD", "SOLVER.BASE_LR", 0.5, "SOLVER.MOMENTUM", 0.0, "SOLVER.WEIGHT_DECAY", 0.0,
        "SOLVER.CLIP_GRADIENTS.ENABLED", False, "SOLVER.WARMUP_ITERS", 0, "SOLVER.IMS_PER_BATCH", 4,
        "SOLVER.MAX_ITER", 1, "DATALOADER.NUM_WORKERS", 0, "TEST.VSS.VC_WINDOWS", (2, 3), "SEED", 0,
        "OUTPUT_DIR", str(output_dir), "MODEL.WEIGHTS", weights,
    ])


def _register(root):
    for name, split in ((TRAIN, "train"), (VAL, "val")):
        if name not in DatasetCatalog.list():
            register_vspw_layout(name, str(root), split, SYNTHETIC_CLASSES, SYNTHETIC_COLORS)


def _job(root, output_dir, weights):
    """What each process runs: one training step from `weights`, then their evaluation."""
    _register(root)
    cfg = _cfg(output_dir, weights)
    seed_all_rng(0)  # every rank alike: the sampler's shared seed comes from rank 0's draw
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)  # both runs start from `weights`
    assert isinstance(trainer.model, nn.parallel.DistributedDataParallel) == (comm.get_world_size() > 1)
    for module in trainer.model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.p = 0.0
    trainer.train()  # rank 0 saves model_final.pth
    model = build_model(cfg)
    DetectionCheckpointer(model).load(weights)
    results = Trainer.test(cfg, model)
    if comm.is_main_process():
        with open(output_dir / "results.json", "w") as f:
            json.dump({"world_size": comm.get_world_size(), "results": results}, f)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{world size: (final weights, evaluation results)} of the job on 1 and 2 processes."""
    root = tmp_path_factory.mktemp("synthetic")
    # 4 training frames: one batch of 4 on one process, 2 + 2 on two. 3 validation videos of
    # 4 frames: two go to one rank, one to the other.
    generate(root, train_videos=1, val_videos=3, frames=4, height=HEIGHT, width=WIDTH)
    _register(root)
    torch.manual_seed(0)
    weights = tmp_path_factory.mktemp("weights")
    DetectionCheckpointer(build_model(_cfg(weights)), save_dir=str(weights)).save("random")
    out = {}
    for world in (2, 1):
        output_dir = tmp_path_factory.mktemp(f"world{world}")
        launch(_job, world, args=(root, output_dir, str(weights / "random.pth")), device="cpu")
        with open(output_dir / "results.json") as f:
            saved = json.load(f)
        assert saved["world_size"] == world
        final = torch.load(output_dir / "model_final.pth", map_location="cpu", weights_only=False)["model"]
        out[world] = (final, saved["results"])
    out["initial"] = torch.load(weights / "random.pth", map_location="cpu", weights_only=False)["model"]
    return out


@pytest.mark.slow
def test_ddp_step_equals_single_process_step(runs):
    (two, _), (one, _), initial = runs[2], runs[1], runs["initial"]
    assert two.keys() == one.keys()
    moved = 0.0
    for name, value in one.items():
        if name.endswith("num_batches_tracked"):
            continue  # NaiveSyncBatchNorm does not count batches across processes (unused with a momentum)
        if name.endswith("running_var"):
            # detectron2's NaiveSyncBatchNorm keeps the biased batch variance across processes
            # (plain BN, in one process, the unbiased one): n / (n - 1) apart in the update, with
            # n = 4 images x 8 x 16 pixels of the head's fused map (frames padded to 32x64),
            # momentum 0.1.
            n, start = 4 * 8 * 16, 0.9 * initial[name]
            torch.testing.assert_close(value - start, (two[name] - start) * n / (n - 1), rtol=0, atol=1e-6)
            continue
        assert torch.allclose(two[name], value, rtol=0, atol=1e-6), name
        if value.is_floating_point():
            moved = max(moved, (value - initial[name]).abs().max().item())
    # The step moved the weights far more than the tolerance.
    assert moved > 1e-3


@pytest.mark.slow
def test_distributed_evaluation_equals_single_process(runs):
    (_, two), (_, one) = runs[2], runs[1]
    metrics = two["sem_seg"]
    assert not math.isnan(metrics["mIoU"]) and not math.isnan(metrics["mVC3"])
    assert json.dumps(two, sort_keys=True) == json.dumps(one, sort_keys=True)


def test_one_process_runs_in_place_and_bad_counts_are_named():
    calls = []
    assert launch(lambda *a: calls.append(a) or "done", 1, args=(1, 2), device="cpu") == "done"
    assert calls == [(1, 2)]
    with pytest.raises(ValueError, match="need at least one process and one machine, got 0 processes on 1"):
        launch(print, 0, device="cpu")
    with pytest.raises(ValueError, match="a 2-machine run needs an explicit --dist-url"):
        launch(print, 2, num_machines=2, machine_rank=0, dist_url="auto", device="cpu")

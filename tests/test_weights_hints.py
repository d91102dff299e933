"""The hints for missing weights name commands that work: run as written (with a 2-step schedule on
tiny videos appended), they write the file the hint names, and the hinted next step then runs."""
import re
import shlex

import pytest
import torch

from vss.data.synthetic import generate
from vss.engine import VideoPredictor, check_weights, setup_cfg

from conftest import REPO, load_script

CONFIGS = "configs/synthetic"


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """The working directory is a fresh one (configs name their outputs relative to it), with tiny videos;
    returns the overrides that train and evaluate on them in 2 steps."""
    monkeypatch.chdir(tmp_path)
    generate(tmp_path / "videos", train_videos=1, val_videos=1, frames=4, height=32, width=48)
    name = f"hints_{tmp_path.name}"
    return ["DATASETS.FOLDERS", str([[f"{name}_train", "videos", "train"], [f"{name}_val", "videos", "val"]]),
            "DATASETS.TRAIN", f"('{name}_train',)", "DATASETS.TEST", f"('{name}_val',)", "MODEL.DEVICE", "cpu",
            "INPUT.MIN_SIZE_TRAIN", "(48,)", "INPUT.CROP.SIZE", "(32,32)", "INPUT.MIN_SIZE_TEST", "32",
            "SOLVER.IMS_PER_BATCH", "1", "SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "0",
            "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "64", "DATALOADER.NUM_WORKERS", "0", "SEED", "0"]


def hint_of(config, opts, training=False):
    """(the commands the hint names, in order, the file it says to pass as MODEL.WEIGHTS)."""
    with pytest.raises((FileNotFoundError, ValueError)) as error:
        check_weights(setup_cfg(config, opts), config, training=training)
    message = str(error.value)
    commands = re.findall(r"`(\.venv/bin/python train_net\.py [^`]*)`", message)
    weights = re.search(r"then pass MODEL\.WEIGHTS (\S+)$", message)
    assert commands and weights, message
    return commands, weights.group(1)


def run_train_net(command, tiny):
    """`command` (".venv/bin/python train_net.py ARGS") through train_net.py's main, with `tiny` appended."""
    words = shlex.split(command)
    assert words[:2] == [".venv/bin/python", "train_net.py"]
    train_net = load_script(REPO / "train_net.py")
    return train_net.main(train_net.build_parser().parse_args(words[2:] + tiny))


@pytest.mark.slow
def test_eval_only_hint_with_its_own_output_dir(in_tmp, tmp_path):
    config = f"{REPO}/{CONFIGS}/mask2former_tiny.yaml"
    commands, weights = hint_of(config, ["MODEL.WEIGHTS", "", "OUTPUT_DIR", "runs/eval"])
    assert commands == [f".venv/bin/python train_net.py --config-file {config} OUTPUT_DIR runs/eval"]
    assert weights == "runs/eval/model_final.pth"
    torch.manual_seed(0)
    run_train_net(commands[0], in_tmp)
    assert (tmp_path / weights).is_file()
    # the second step: --eval-only with the named weights
    results = run_train_net(f".venv/bin/python train_net.py --config-file {config} --eval-only MODEL.WEIGHTS "
                            f"{weights} OUTPUT_DIR runs/eval", in_tmp)
    assert set(results["sem_seg"]) >= {"mIoU", "mVC8"}


@pytest.mark.slow
def test_mpvss_inference_hint_names_an_mpvss_checkpoint(in_tmp, tmp_path):
    # the demo's check: the config's MODEL.WEIGHTS (the per-frame checkpoint) is missing
    config = f"{REPO}/{CONFIGS}/mpvss_query_flow.yaml"
    commands, weights = hint_of(config, [])
    assert commands == [f".venv/bin/python train_net.py --config-file {REPO}/{CONFIGS}/mask2former_tiny.yaml",
                        f".venv/bin/python train_net.py --config-file {config}"]
    assert weights == "output/synthetic/mpvss_query_flow/model_final.pth"
    torch.manual_seed(0)
    run_train_net(commands[0], in_tmp)
    # the per-frame checkpoint now exists, but it cannot run MPVSS: the same commands are named
    assert hint_of(config, []) == (commands, weights)
    run_train_net(commands[1], in_tmp)
    assert (tmp_path / weights).is_file()
    # the second step: the demo's checks and loading with the named weights
    cfg = setup_cfg(config, in_tmp + ["MODEL.WEIGHTS", weights])
    check_weights(cfg, config, training=False)
    model = VideoPredictor(cfg).model
    trained = torch.load(weights, weights_only=True)["model"]
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())

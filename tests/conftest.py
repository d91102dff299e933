import importlib.util
from pathlib import Path

import pytest
import torch

# Test tensors are tiny: one intra-op thread avoids thread spin-up costs that dominate them
# on a 2-core machine (and keeps runs reproducible).
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


# Reference data the tests compare against (upstream and official key lists, the upstream
# Mask2Former parity fixture), kept in the repository so that every clone runs the whole suite.
DATA = REPO / "tests" / "data"


@pytest.fixture(scope="session")
def reference_dir():
    """tests/data; a missing folder or file fails the test that needs it, never skips it."""
    if not DATA.is_dir():
        pytest.fail(f"reference data folder {DATA} is missing: it is part of the repository (git checkout tests/data)")
    return DATA


def read_key_list(path, prefix=""):
    """{name: shape} of a reference key list ("name<TAB>shape" lines), in file order.

    Only names starting with `prefix` are kept, with the prefix removed. Shapes may be written
    "64,6,7,7" or "(64, 6, 7, 7)"; an empty shape is a scalar. Lines starting with # are comments.
    """
    keys = {}
    for line in Path(path).read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, shape = line.split("\t")
        if name.startswith(prefix):
            keys[name[len(prefix):]] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    return keys


def load_script(path):
    """Import a script that is not in a package (demo/demo.py) as a module."""
    spec = importlib.util.spec_from_file_location(f"vss_script_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_opts(root, out):
    """The synthetic videos at `root` as train and test sets, and a 2-step CPU schedule into `out`."""
    name = f"loading_{out.parent.name}"
    return ["DATASETS.FOLDERS", str([[f"{name}_train", str(root), "train"], [f"{name}_val", str(root), "val"]]),
            "DATASETS.TRAIN", f"('{name}_train',)", "DATASETS.TEST", f"('{name}_val',)", "MODEL.DEVICE", "cpu",
            "INPUT.MIN_SIZE_TRAIN", "(48,)", "INPUT.CROP.SIZE", "(32,32)", "INPUT.MIN_SIZE_TEST", "32",
            "SOLVER.IMS_PER_BATCH", "1", "SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "0",
            "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "64", "DATALOADER.NUM_WORKERS", "0", "SEED", "0",
            "OUTPUT_DIR", str(out)]


class Toy(torch.nn.Module):
    """A tiny model with a backbone (conv, GroupNorm), a head, an embedding and a frozen layer:
    one parameter of each kind the optimizer's rules tell apart."""

    def __init__(self):
        super().__init__()
        self.backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.GroupNorm(2, 4))
        self.head = torch.nn.Linear(4, 2)
        self.query_embed = torch.nn.Embedding(3, 4)
        self.frozen = torch.nn.Linear(2, 2)
        self.frozen.requires_grad_(False)

import os
from pathlib import Path

import pytest
import torch

# Test tensors are tiny: one intra-op thread avoids thread spin-up costs that dominate them
# on a 2-core machine (and keeps runs reproducible).
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


def _reference_dir():
    """The shared reference data (key lists, parity fixture), kept beside the repo."""
    return Path(os.environ.get("VSS_REFERENCE_DIR", REPO.parent / "shared" / "reference"))


@pytest.fixture(scope="session")
def reference_dir():
    path = _reference_dir()
    if not path.is_dir():
        msg = f"reference data not found at {path} (set VSS_REFERENCE_DIR)"
        if os.environ.get("CI"):
            pytest.fail(msg)  # CI always has it: a missing folder is a broken set-up
        pytest.skip(msg)
    return path


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

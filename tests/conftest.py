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

""".pkl checkpoints: read without running code from them; upstream model-zoo files still load."""
import os
import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model

from vss.engine import VideoPredictor, setup_cfg
from vss.engine.checkpoint import VSSCheckpointer
from vss.engine.safe_pickle import UnsafePickleError, load_pickle

from conftest import REPO

CONFIG = str(REPO / "configs" / "synthetic" / "mask2former_tiny.yaml")


class RunsCode:
    """Pickles as a call of os.system: reading the file runs the command."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(setup_cfg(CONFIG, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""]))


def test_a_pkl_that_runs_code_is_refused_before_it_runs(model, tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {"w": RunsCode(f"touch {marker}")}, "__author__": "x"}, f, protocol=2)
    system = f"{os.system.__module__}.system"  # posix.system
    with pytest.raises(UnsafePickleError, match=rf"checkpoint .*evil\.pkl refers to {system}, which a checkpoint of "
                                                r"arrays does not hold: refused .* set MODEL.WEIGHTS_TRUSTED True"):
        VSSCheckpointer(model).load(str(path))
    assert not marker.exists()
    # through the config, as every entry point loads
    cfg = setup_cfg(CONFIG, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", str(path)])
    with pytest.raises(UnsafePickleError, match="evil.pkl refers to"):
        VideoPredictor(cfg)
    assert not marker.exists()
    # a file the user trusts is read with plain pickle: the command runs (and the file is no checkpoint)
    with pytest.raises(Exception):
        VSSCheckpointer(model, trusted=True).load(str(path))
    assert marker.exists()


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_upstream_model_zoo_pkl_loads(model, tmp_path, protocol):
    # upstream Mask2Former / detectron2's layout: numpy arrays, with name-matching heuristics
    state = OrderedDict((k, v.numpy()) for k, v in model.state_dict().items())
    path = tmp_path / "model_final.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "third_party", "matching_heuristics": True}, f, protocol=protocol)
    torch.manual_seed(1)
    other = build_model(setup_cfg(CONFIG, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""]))
    VSSCheckpointer(other).load(str(path))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in other.state_dict().items())


def test_numpy_1_and_2_names_and_python_2_strings(tmp_path):
    data = {"model": OrderedDict(a=np.arange(6, dtype=np.float32).reshape(2, 3), b=np.int64(7)), "name": b"\x00\xff",
            "sizes": [1, 2.5, None, True, (3, "x")]}
    pickled = pickle.dumps(data, protocol=2)
    for core in (b"numpy._core.multiarray", b"numpy.core.multiarray"):  # numpy 2.x and 1.x pickles
        path = tmp_path / "data.pkl"
        path.write_bytes(pickled.replace(b"numpy._core.multiarray", core).replace(b"numpy.core.multiarray", core))
        loaded = load_pickle(str(path))
        assert np.array_equal(loaded["model"]["a"], data["model"]["a"]) and loaded["model"]["b"] == 7
        assert loaded["name"] == b"\x00\xff" and loaded["sizes"] == data["sizes"]
    # a class besides the admitted ones is refused even when harmless
    path.write_bytes(pickle.dumps({"model": {"w": torch.zeros(1)}}))
    with pytest.raises(UnsafePickleError, match=r"refers to torch\._utils\._rebuild_tensor_v2"):
        load_pickle(str(path))

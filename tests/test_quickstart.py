"""The quickstart's choice of synthetic set: the options it trains with and the folder's record."""
import json

import pytest
import torch

from vss.benchmark.quickstart import DATA, claim_output, data_opts


def test_data_opts_name_the_registered_sets():
    assert data_opts(DATA["vspw"]) == ["DATASETS.TRAIN", "('synthetic_vss_vspw_train',)",
                                       "DATASETS.TEST", "('synthetic_vss_vspw_val',)"]
    assert data_opts(DATA["clean"], flow=True) == ["DATASETS.TRAIN", "('synthetic_vss_flow_train',)",
                                                   "DATASETS.TEST", "('synthetic_vss_flow_val',)"]


def test_a_folder_reuses_its_models_only_for_their_set(tmp_path):
    out = tmp_path / "run"
    claim_output(str(out), DATA["clean"])
    claim_output(str(out), DATA["vspw"])  # no model trained yet (a run stopped early): any set
    assert json.loads((out / "data.json").read_text()) == {"data": "synthetic_vss_vspw"}
    (out / "mask2former").mkdir()
    torch.save({}, out / "mask2former" / "model_final.pth")
    claim_output(str(out), DATA["vspw"])  # a rerun on the same set
    with pytest.raises(ValueError, match=rf"{out} holds models trained on synthetic_vss_vspw, not synthetic_vss:"):
        claim_output(str(out), DATA["clean"])
    assert json.loads((out / "data.json").read_text()) == {"data": "synthetic_vss_vspw"}


def test_a_folder_of_an_older_quickstart_holds_the_clean_sets_models(tmp_path):
    (tmp_path / "mask2former").mkdir()
    torch.save({}, tmp_path / "mask2former" / "model_final.pth")
    with pytest.raises(ValueError, match="holds models trained on synthetic_vss, not synthetic_vss_vspw"):
        claim_output(str(tmp_path), DATA["vspw"])
    assert not (tmp_path / "data.json").exists()
    claim_output(str(tmp_path), DATA["clean"])
    assert json.loads((tmp_path / "data.json").read_text()) == {"data": "synthetic_vss"}

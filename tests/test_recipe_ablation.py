"""vss.benchmark.recipe_ablation (tools/recipe_ablation.py): every switch it measures is a release value of the VSPW configs,
applied to the synthetic config it fine-tunes (the runs themselves are not part of the suite)."""
import pytest

from vss.benchmark import recipe_ablation as ablation
from vss.engine import setup_cfg
from vss.benchmark.quickstart import MPVSS, TV3S

from conftest import REPO

# the config whose recipe each model's switches come from
RELEASE = {"MPVSS": "configs/vspw/mpvss/R50.yaml", "TV3S": "configs/vspw/tv3s/MiT-B1.yaml"}
CASES = [("MPVSS", MPVSS, ablation.MPVSS_SWITCHES), ("TV3S", TV3S, ablation.TV3S_SWITCHES)]


def value(cfg, key):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


@pytest.mark.parametrize("model,config,switches", CASES, ids=[c[0] for c in CASES])
def test_each_switch_sets_the_release_value_on_the_synthetic_config(model, config, switches):
    release = setup_cfg(str(REPO / RELEASE[model]))
    synthetic = setup_cfg(str(REPO / config))
    runs = ablation.with_all(switches)
    assert runs["synthetic config (code defaults)"] == [] and len(runs) == len(switches) + 1
    every = runs["all of the above (release)"]
    for name, opts in runs.items():
        cfg = setup_cfg(str(REPO / config), list(opts))
        keys = opts[::2]
        for key in keys:
            assert value(cfg, key) == value(release, key), (name, key)
            assert value(synthetic, key) != value(release, key), f"{key}: the synthetic config already has it"
            assert key in every[::2]

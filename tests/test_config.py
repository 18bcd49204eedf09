from pathlib import Path

import pytest
import yaml
from snakemake.utils import update_config

from knnlm_limits.config import ConfigError, validate

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_filled():
    cfg = validate({})
    assert cfg["knn"]["k"] == 1024 and cfg["knn"]["lambda"] == 0.25 and cfg["knn"]["temperature"] == 1.0
    assert cfg["macondo"]["n_villagers"] == 500 and cfg["macondo"]["n_parents"] == 100
    assert cfg["memorization"]["train"]["batch_size"] == 32


def test_partial_section_keeps_given_values():
    cfg = validate({"memorization": {"train": {"checkpoints": [0, 5]}}})
    assert cfg["memorization"]["train"]["checkpoints"] == [0, 5]
    assert cfg["memorization"]["shape"]["n_layer"] == 4


@pytest.mark.parametrize(
    "config, key",
    [
        ({"knn": {"lamda": 0.3}}, "knn.lamda"),
        ({"bogus": 1}, "bogus"),
        ({"knn": {"k": "many"}}, "knn.k"),
        ({"memorization": {"shape": {"n_layer": 2.5}}}, "memorization.shape.n_layer"),
        ({"table1": {"projection": {"direction": "sideways"}}}, "table1.projection.direction"),
    ],
)
def test_bad_config_names_the_key(config, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        validate(config)


@pytest.mark.parametrize("name", ["config.yaml", "config/paper.yaml", "config/wikitext2-local.yaml", ".tests/config.yaml"])
def test_shipped_configs_validate(name):
    cfg = yaml.safe_load((ROOT / name).read_text())
    if name != "config.yaml":
        base = yaml.safe_load((ROOT / "config.yaml").read_text())
        update_config(base, cfg)  # as snakemake --configfile merges
        cfg = base
    validate(cfg)

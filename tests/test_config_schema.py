"""Config and sheets are validated against their JSON schemas when the workflow starts."""

from __future__ import annotations

import copy

import pytest
import yaml
from conftest import ROOT, snakemake
from snakemake.utils import validate

SCHEMA = str(ROOT / "config" / "schemas" / "config.schema.yaml")


@pytest.fixture()
def config() -> dict:
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def test_default_config_is_valid(config):
    validate(copy.deepcopy(config), SCHEMA)


@pytest.mark.parametrize(
    ("mutate", "named"),
    [
        (lambda c: c["data"].update(sourse="twin"), "sourse"),
        (lambda c: c["sequence"].update(points="2048"), "points"),
        (lambda c: c["data"].update(source="tiwn"), "tiwn"),
        (lambda c: c["basis"]["metabolites"].append("Glx"), "Glx"),
        (lambda c: c.update(fitting_backend="auto"), "fitting_backend"),
    ],
)
def test_bad_config_is_refused_naming_the_key(config, mutate, named):
    mutate(config)
    with pytest.raises(Exception, match=named):
        validate(config, SCHEMA)


def test_snakemake_refuses_a_misspelled_key(tmp_path, config):
    config["sequence"]["feild_mhz"] = 127.8
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    proc = snakemake("-n", "--configfile", str(bad))
    assert proc.returncode != 0
    assert "feild_mhz" in proc.stdout + proc.stderr

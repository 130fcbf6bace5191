"""The sesa config section, model.kind sesa and the ranker's match list."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[3]
BASE = {"name": "x", "source": {"kind": "simulator"}}


def test_the_sesa_configs_load_with_model_kind_sesa() -> None:
    for name in ("sesa_movielens.yaml", "sesa_simulated.yaml"):
        cfg = load_config(ROOT / "configs" / name)
        assert cfg.model.kind == "sesa" and cfg.sesa.top_k == 10


def test_num_match_follows_the_match_list() -> None:
    cfg = parse_config({**BASE, "model": {"match": [{"name": "sesa", "bundle": "runs/b"}]}})
    assert cfg.model.num_match == 1 and cfg.model.match[0].bundle == "runs/b"
    assert parse_config(BASE).model.num_match == 0


def test_a_num_match_that_contradicts_the_match_list_is_named() -> None:
    with pytest.raises(ConfigError, match=r"model: num_match is 2 but match lists 1"):
        parse_config({**BASE, "model": {"num_match": 2, "match": [{"bundle": "b"}]}})


def test_unknown_sesa_keys_and_bad_values_are_named() -> None:
    with pytest.raises(ConfigError, match=r"sesa\.top_kk: unknown key"):
        parse_config({**BASE, "sesa": {"top_kk": 3}})
    with pytest.raises(ConfigError, match=r"sesa\.holdout_fraction"):
        parse_config({**BASE, "sesa": {"holdout_fraction": 1.0}})
    with pytest.raises(ConfigError, match=r"model\.match\[0\]\.bundle: required key is missing"):
        parse_config({**BASE, "model": {"match": [{"name": "sesa"}]}})

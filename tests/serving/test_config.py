"""Server config files: the server's own YAML, and a pipeline YAML mapped onto it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from recsys.config import ConfigError
from serving.config import ServerConfig, load_server_config

ROOT = Path(__file__).resolve().parents[2]


def test_the_shipped_serving_config_loads_and_binds_loopback() -> None:
    cfg = load_server_config(ROOT / "configs" / "serving.yaml")
    assert cfg.host == "127.0.0.1" and cfg.redis is None and cfg.auth_token is None
    assert cfg.embedder_bundles == "runs/simulated/bundles"


def test_a_pipeline_config_serves_what_its_pipeline_wrote() -> None:
    cfg = load_server_config(ROOT / "configs" / "simulated.yaml")
    pipeline = yaml.safe_load((ROOT / "configs" / "simulated.yaml").read_text())
    out = Path(pipeline["output_dir"])
    bundles = cfg.ranker_bundles or cfg.embedder_bundles
    assert bundles == str(out / "bundles")
    assert cfg.items == str(out / "raw" / "items.parquet")


def test_an_unknown_key_is_an_error_naming_the_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "serving.yaml"
    path.write_text("port: 1\nmax_idz_per_call: 3\n")
    with pytest.raises(ConfigError, match=r"serving.yaml: max_idz_per_call"):
        load_server_config(path)


def test_defaults_bind_loopback_without_auth() -> None:
    cfg = ServerConfig()
    assert cfg.host == "127.0.0.1" and cfg.workers == 1 and cfg.tls_cert is None


def test_overrides_apply_to_server_and_pipeline_configs() -> None:
    cfg = load_server_config(ROOT / "configs" / "serving.yaml", {"redis.url": "redis://h:1/0"})
    assert cfg.redis is not None and cfg.redis.url == "redis://h:1/0"
    cfg = load_server_config(ROOT / "configs" / "simulated.yaml", {"serving.port": 6000})
    assert cfg.port == 6000

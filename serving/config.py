"""Settings of the gRPC server (``configs/serving.yaml``), and how a pipeline config maps
onto them (``recsys serve --config configs/simulated.yaml``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from recsys.config import ConfigError, PipelineConfig, load_config
from recsys.online_features import ONLINE_DIR

PositiveInt = Annotated[int, Field(ge=1)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


class RedisSettings(BaseModel):
    """The optional Redis tier. Without it the server caches in process only."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str
    cluster: bool = False  # redis-py's RedisCluster client (multi-slot reads split by slot)
    namespace: str = "recsys"  # what spark_jobs/batch_embed.py warmed (read when complete)
    online_namespace: str = "recsys-online"  # vectors the server computed and wrote back
    features_namespace: str = "recsys-features"  # spark_jobs/materialize_features.py's rows
    ttl_s: PositiveInt = 86_400
    ttl_jitter: Fraction = 0.1  # TTL drawn from [ttl, ttl * (1 + jitter)]
    timeout_s: PositiveFloat = 0.05  # per command; a slower Redis counts as an error
    backoff_initial_s: PositiveFloat = 0.2  # after an error, skip Redis this long, doubling
    backoff_max_s: PositiveFloat = 5.0


class ServerConfig(BaseModel):
    """Everything ``serving.server`` needs. Paths are plain strings (YAML)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=50051, ge=0, le=65535)  # 0 = any free port
    workers: PositiveInt = 1  # > 1: that many processes on one port (SO_REUSEPORT)
    embedder_bundles: str | None = None  # version directories of a two-tower bundle
    ranker_bundles: str | None = None  # version directories of a ranker bundle
    explainer_bundles: str | None = None  # version directories of a sesa bundle (Explain)
    items: str | None = None  # raw items table (parquet): the item catalogue
    users: str | None = None  # raw users table (parquet): user rows when no online features
    # spark_jobs/materialize_features.py's output directory (<output_dir>/online): each user's
    # latest history, concepts and priors, each item's priors. Redis, when configured and
    # materialised into, is read first; None = catalogues only.
    online_features: str | None = None
    reload_interval_s: float = Field(default=30.0, ge=0)  # 0 = only on refresh()
    redis: RedisSettings | None = None
    lru_entries: int = Field(default=100_000, ge=0)
    max_ids_per_call: PositiveInt = 4096
    max_candidates: PositiveInt = 1000
    max_k: PositiveInt = 1000
    retrieval_shortlist: PositiveInt | None = None  # tier-1 candidates; None = the index's
    max_message_bytes: PositiveInt = 16 << 20
    compute_threads: PositiveInt = 2
    # torch intra-op threads per process (None = torch's default: every core). With
    # ``workers`` > 1 keep workers x torch_threads <= cores, or the processes fight for them.
    torch_threads: PositiveInt | None = None
    grace_s: float = Field(default=5.0, ge=0)  # drain time for in-flight calls on shutdown
    auth_token: str | None = None  # bearer token; None = no auth
    tls_cert: str | None = None  # PEM paths; both or neither
    tls_key: str | None = None
    metrics_port: int | None = Field(default=None, ge=0, le=65535)  # Prometheus /metrics

    @classmethod
    def from_pipeline(cls, cfg: PipelineConfig, **overrides: Any) -> ServerConfig:
        """Serve what ``recsys pipeline`` with ``cfg`` produced: its bundles under
        ``<output_dir>/bundles`` and its raw ``items``/``users`` tables as catalogues."""
        out = cfg.out
        role = {"ranker": "ranker_bundles", "sesa": "explainer_bundles"}.get(
            cfg.model.kind, "embedder_bundles"
        )
        redis = {"url": cfg.serving.redis_url} if cfg.serving.redis_url else None
        fields: dict[str, Any] = {
            "host": cfg.serving.host,
            "port": cfg.serving.port,
            role: str(out / "bundles"),
            "items": str(out / "raw" / "items.parquet"),
            "users": str(out / "raw" / "users.parquet"),
            "online_features": str(out / ONLINE_DIR),
            "redis": redis,
            "max_ids_per_call": cfg.serving.max_request_items,
        }
        return cls.model_validate({**fields, **overrides})


def load_server_config(
    path: str | Path, overrides: dict[str, object] | None = None
) -> ServerConfig:
    """Read a server config YAML, or a pipeline config YAML (recognised by its ``source``
    key) mapped through :meth:`ServerConfig.from_pipeline`. ``overrides`` maps dotted keys
    to values (``recsys serve --set ...``): pipeline keys for a pipeline config, server keys
    (``redis.url``) for a server config. Errors name the file and key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    if "source" in raw:
        return ServerConfig.from_pipeline(load_config(path, overrides))
    for dotted, value in (overrides or {}).items():
        node = raw
        *head, last = dotted.split(".")
        for key in head:
            if node.get(key) is None:  # absent or null (redis: null) -> a new mapping
                node[key] = {}
            node = node[key]
            if not isinstance(node, dict):
                raise ConfigError(f"{path}: override {dotted}: {key} is not a mapping")
        node[last] = value
    try:
        return ServerConfig.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{path}: {where}: {first['msg']}") from None

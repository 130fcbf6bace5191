"""Typed configuration for every stage, loaded from YAML.

One YAML file describes one runnable scenario (``configs/movielens.yaml``,
``configs/simulated.yaml``). Each stage reads its own section. Unknown or wrongly typed keys
fail loudly with the file, the dotted key path and the reason::

    ConfigError: configs/movielens.yaml: train.batch_sise: unknown key
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the key path."""


# Seeds feed numpy's legacy RNG too, which takes 0 <= seed < 2**32.
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
# Counts that must be at least one (sizes, epochs, steps) and rates that must be positive.
PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class Section(BaseModel):
    """Base for every config section: unknown keys are errors, values are never coerced."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


from recsys.omni.config import OmniConfig  # noqa: E402  (it subclasses Section, above)


class SourceConfig(Section):
    """Where raw logs come from."""

    kind: Literal["movielens", "simulator", "criteo"]
    # For movielens: a directory in any official layout (ml-100k, ml-1m, ml-latest[-small]).
    # For criteo: a directory of day_*.tsv files (or one file).
    path: str | None = Field(default=None, validate_default=True)
    # For movielens: per movie, the tags used by the most tagging events become item concepts
    # (0 = genres only). Tags are counted over the whole file, later ones included.
    max_item_tags: int = Field(default=20, ge=0)

    @field_validator("path")
    @classmethod
    def _path_required(cls, path: str | None, info: ValidationInfo) -> str | None:
        # A field validator (not a model validator) so the error is reported at source.path.
        kind = info.data.get("kind")
        if kind in ("movielens", "criteo") and not path:
            raise ValueError(f"required when source.kind is {kind!r}")
        return path


class SimulatorConfig(Section):
    """The seeded synthetic world (see ``recsys.sources.simulator``)."""

    seed: Seed = 7
    num_users: PositiveInt = 2_000
    num_items: PositiveInt = 1_000
    num_concepts: PositiveInt = 48
    num_creators: PositiveInt = 200
    days: PositiveInt = 21
    new_items_per_day: NonNegativeInt = 20
    slate_size: PositiveInt = 10
    sessions_per_active_day: PositiveFloat = 1.5
    image_size: int = Field(default=32, ge=8, le=128)
    audio_dim: int = Field(default=32, ge=4, le=512)
    with_media: bool = True
    start_date: Annotated[date, Field(strict=False)] = date(2024, 1, 1)
    # Sessions and leaving (KuaiSim-style leave model): a session is a run of slates; the user
    # leaves after ``leave_after_bad_slates`` slates in a row without a click, or at random
    # with ``leave_prob_per_slate`` after any slate, or after ``max_slates_per_session``.
    max_sessions_per_day: int = Field(default=4, ge=1, le=16)
    max_slates_per_session: int = Field(default=8, ge=1, le=64)
    leave_after_bad_slates: int = Field(default=2, ge=1)
    leave_prob_per_slate: float = Field(default=0.1, ge=0, lt=1)
    # Examination probability of slate position j is (1 + j) ** -position_bias (0 = none).
    position_bias: float = Field(default=0.3, ge=0)
    # Item popularity is Zipf: weight of the item of popularity rank r is r ** -zipf_exponent.
    zipf_exponent: float = Field(default=1.0, gt=0)
    # Logging policy: sample slates with probability ~ popularity ** logging_popularity_power,
    # mixed with a uniform draw over live items with weight ``exploration``.
    logging_popularity_power: float = Field(default=0.7, ge=0)
    exploration: float = Field(default=0.2, ge=0, le=1)
    # Retention: P(return tomorrow) = sigmoid(base_u + return_satisfaction_weight * (m - 1)),
    # m = EMA (weight ``satisfaction_memory`` on the past) of daily log1p(dwell minutes).
    return_satisfaction_weight: float = Field(default=1.0, ge=0)
    satisfaction_memory: float = Field(default=0.5, ge=0, lt=1)
    # Hidden collaborative taste: the click logit gains ``taste_weight * t_u . t_i`` with
    # ``taste_dim`` latent factors per user and item (the term has std ``taste_weight``). No
    # feature shows them: only user/item ids and co-clicks reveal them, so this is the knob
    # that makes id embeddings (and their budget) matter. 0 = off (the default world).
    taste_dim: int = Field(default=0, ge=0, le=256)
    taste_weight: float = Field(default=0.0, ge=0)


class LabelRule(Section):
    """Which events count as positives."""

    kind: Literal["click", "rating", "dwell"] = "rating"
    # rating >= threshold (movielens) or dwell seconds >= threshold.
    threshold: float = Field(default=4.0, allow_inf_nan=False)
    # Events that are neither positive nor a valid negative are dropped (e.g. rating 3 when
    # drop_between is set: ratings in [drop_between, threshold) are discarded, DCN-v2 style).
    drop_between: float | None = Field(default=None, allow_inf_nan=False)

    @field_validator("drop_between")
    @classmethod
    def _below_threshold(cls, value: float | None, info: ValidationInfo) -> float | None:
        threshold = info.data.get("threshold")
        if value is not None and threshold is not None and value > threshold:
            raise ValueError(f"must be at most threshold ({threshold})")
        return value


class SplitConfig(Section):
    """Chronological split, never random.

    ``by="time"``: global cut-offs, train < valid_from <= valid < test_from <= test (dates
    below, or quantiles of example ts at ``1 - valid - test`` and ``1 - test``).
    ``by="user_time"``: per user, examples ordered by (ts, item_id); the last
    ``floor(n * test_fraction)`` are test, the ``floor(n * valid_fraction)`` before them
    valid, the rest train (a user with few examples keeps them all in train).
    """

    by: Literal["time", "user_time"] = "time"
    valid_from: str | None = None  # ISO date/time; None = derive from quantiles below
    test_from: str | None = None
    valid_fraction: float = Field(default=0.1, gt=0, lt=0.5)
    test_fraction: float = Field(default=0.1, gt=0, lt=0.5)

    @model_validator(mode="after")
    def _dates_only_for_global_time(self) -> SplitConfig:
        if self.by == "user_time" and (self.valid_from or self.test_from):
            raise ValueError("valid_from/test_from apply to by='time' only, not 'user_time'")
        return self


class SparkConfig(Section):
    """How the Spark session is built; the same jobs run on local[*] and on a cluster."""

    master: str = "local[*]"
    app_name: str = "recsys"
    driver_memory: str = "2g"
    executor_memory: str = "2g"
    shuffle_partitions: PositiveInt = 8
    extra: dict[str, str] = Field(default_factory=dict)


class PrepareConfig(Section):
    """``spark_jobs/build_training_data.py``: raw logs -> examples + manifest."""

    label: LabelRule = LabelRule()
    split: SplitConfig = SplitConfig()
    history_length: int = Field(default=20, ge=0, le=500)
    max_bad_fraction: float = Field(default=0.01, ge=0, le=1)
    min_value: float | None = Field(default=None, allow_inf_nan=False)
    max_value: float | None = Field(default=None, allow_inf_nan=False)
    top_values: NonNegativeInt = 10
    # String columns of items/users that are free text (read by text encoders), not categorical
    # attributes: they get no ``s_item_X`` / ``s_user_X`` sparse feature.
    text_columns: list[str] = Field(default_factory=lambda: ["title", "text"])
    # Relative error of approxQuantile when split cut-offs are derived from fractions.
    quantile_error: float = Field(default=0.0005, ge=0, le=0.1)
    # Concept vocabulary (item concepts, normalised: case-folded, whitespace collapsed): concepts
    # seen on fewer items than this are left out of the manifest's vocabulary.
    concept_min_count: PositiveInt = 2
    # Plausible event times, [min_ts, max_ts) in UTC: rows outside (negative, far-future or
    # overflowing times) are quarantined as ``ts_out_of_window`` by the source and prepare stages.
    # (not strict: an ISO string, as a dumped config holds it, is read as a date too)
    min_ts: date = Field(default=date(1970, 1, 1), strict=False)
    max_ts: date = Field(default=date(2100, 1, 1), strict=False)

    @field_validator("max_value")
    @classmethod
    def _max_not_below_min(cls, value: float | None, info: ValidationInfo) -> float | None:
        low = info.data.get("min_value")
        if value is not None and low is not None and value < low:
            raise ValueError(f"must be at least min_value ({low})")
        return value

    @field_validator("max_ts")
    @classmethod
    def _window_not_empty(cls, value: date, info: ValidationInfo) -> date:
        low = info.data.get("min_ts")
        if low is not None and value <= low:
            raise ValueError(f"must be after min_ts ({low})")
        return value

    def ts_window_s(self) -> tuple[int, int]:
        """``[min_ts, max_ts)`` as epoch seconds (UTC midnight of each date)."""
        return tuple(  # type: ignore[return-value]
            int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp())
            for d in (self.min_ts, self.max_ts)
        )


class EmbeddingConfig(Section):
    """Embedding tables: unified (multiplexed), per-feature hashing or collisionless."""

    kind: Literal["unified", "hashing", "collisionless"] = "unified"
    dim: int = Field(default=16, ge=1)  # chunk (probe) dimension d
    # Budget-first: total embedding parameters; table sizes follow. None = collisionless size.
    param_budget: PositiveInt | None = None
    budget_fraction: float | None = Field(default=None, gt=0, le=1)
    num_tables: int = Field(default=1, ge=1)
    # Probes (chunks) per feature; a feature of width k*d takes k probes. Default 1.
    probes: dict[str, PositiveInt] = Field(default_factory=dict)
    # Probes of every feature not named in ``probes``; configs use 2 x dim 8 (16 wide), the
    # AUC/speed balance measured in docs/benchmarks.md (4 x 4: best AUC, ~0.8x speed).
    default_probes: int = Field(default=1, ge=1)
    init_scale: PositiveFloat = 0.05
    salt: int = 0
    # Pooling of multi-valued features (history, concepts): mean keeps every feature on the
    # same scale whatever its length (see recsys/embeddings/unified.py).
    pooling: Literal["mean", "sum"] = "mean"
    # Collisionless vocabularies leave out values seen fewer times than this in train.
    vocab_min_count: int = Field(default=1, ge=1)


class MatchSourceConfig(Section):
    """One match feature of the ranker and where its frozen model comes from."""

    name: Literal["sesa", "omni"] = "sesa"
    # A bundle directory: one version, or a bundle root whose newest version is used.
    # Relative paths are relative to the working directory.
    bundle: str


class ModelConfig(Section):
    """Ranker (DCN-v2), two-tower and SESA model shapes (SESA's own keys: ``sesa``)."""

    kind: Literal["ranker", "two_tower", "omni", "sesa"] = "ranker"
    cross_layers: PositiveInt = 3
    cross_low_rank: PositiveInt | None = None
    mlp: list[PositiveInt] = Field(default_factory=lambda: [128, 64])
    lt_head: bool = False
    tower_dim: PositiveInt = 32
    temperature: PositiveFloat = 0.05
    dense_dim: int | None = Field(default=None, ge=1)  # dense projection width; None = emb dim
    num_match: int = Field(default=0, ge=0)  # match features (SESA / omni scores) fed to ranker
    # The ranker's match features, in column order; num_match follows their count.
    match: list[MatchSourceConfig] = Field(default_factory=list)
    lt_weight: float = Field(default=0.1, ge=0)  # weight of the lt7 MSE loss when lt_head
    logq: bool = True  # two-tower: subtract log item sampling probability from in-batch logits
    freq_buckets: int = Field(default=1 << 16, ge=1)  # two-tower: streaming item count buckets

    @model_validator(mode="before")
    @classmethod
    def _num_match_follows_match(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("match"):
            count = len(data["match"])
            if data.get("num_match") not in (None, count):
                raise ValueError(
                    f"num_match is {data['num_match']} but match lists {count} feature(s)"
                )
            data = {**data, "num_match": count}
        return data


class SesaConfig(Section):
    """SESA explicit-concept model (``model.kind: sesa``, ``recsys.models.sesa``)."""

    # sesa: named, non-negative, top-k sparse concept dimensions; latent: the baseline with the
    # same encoder and parameter count and unnamed dense dimensions.
    variant: Literal["sesa", "latent"] = "sesa"
    top_k: PositiveInt = 10  # non-zero concept activations kept per item
    # Of those, drop the ones below this fraction of the item's strongest activation.
    min_relative_activation: float = Field(default=0.5, ge=0, le=1)
    embed_dim: PositiveInt = 32  # token embedding width
    hidden: PositiveInt = 32  # bi-GRU hidden width per direction
    num_buckets: int = Field(default=1 << 14, ge=2)  # hashed token ids (TextTokenizer)
    max_tokens: PositiveInt = 64  # words read per item text
    id_buckets: PositiveInt = 1 << 16  # hashed user / item id biases
    history_length: NonNegativeInt = 20  # last history items in the user vector
    # Weight of the auxiliary multi-label concept loss (mean over items of the summed BCE).
    concept_loss_weight: NonNegativeFloat = 0.3
    # Items whose concept labels the auxiliary loss never sees (concept precision is measured
    # on them); chosen by a fixed hash of the item id.
    holdout_fraction: float = Field(default=0.3, ge=0, lt=1)
    lr: PositiveFloat = 3e-3  # Adam, dense parameters (GRU, projections, weights)
    # Adam, the embedding tables (tokens, id biases): the many-concept auxiliary loss stalls at
    # the concepts' prior on MovieLens with 3e-3 here, and learns them with 3e-2.
    lr_embedding: PositiveFloat = 3e-2
    # History items enter the user vector from a no-gradient cache of every item's vector,
    # refreshed every this many steps (only candidates are encoded with gradients: ~2x faster
    # on CPU); 0 = encode history items with gradients in every step.
    history_refresh_steps: NonNegativeInt = 10
    # Train on at most this many training rows (a seeded sample; None = all).
    max_train_rows: PositiveInt | None = None


class TrainConfig(Section):
    """Training loop."""

    seed: Seed = 0
    batch_size: PositiveInt = 1024
    epochs: PositiveInt = 5
    lr_dense: PositiveFloat = 1e-3
    lr_embedding: PositiveFloat = 0.05
    weight_decay: NonNegativeFloat = 1e-5
    # Epochs without a better validation metric before stopping (1 = stop at the first).
    patience: PositiveInt = 2
    prefetch: NonNegativeInt = 4  # batches prepared ahead by a thread; 0 = no thread
    max_steps: PositiveInt | None = None
    checkpoint_every: int | None = Field(default=None, ge=1)  # steps; None = end of epoch only
    sharding: Literal["table_wise", "column_wise"] = "table_wise"  # DMP planner constraint
    recall_k: int = Field(default=10, ge=1)  # two-tower validation recall@K
    progress: bool = True  # tqdm bar with loss and examples/s
    num_threads: int | None = Field(default=None, ge=1)  # torch intra-op threads; None = default
    # Keep the featurised training split in memory across epochs when it fits in this many MiB
    # (0 = always stream from Parquet, as for splits larger than the budget).
    in_memory_mb: NonNegativeInt = 1024


class ServingConfig(Section):
    """gRPC server (later issues)."""

    host: str = "127.0.0.1"
    port: int = Field(default=50051, ge=0, le=65535)  # 0 = any free port
    redis_url: str | None = None
    max_request_items: PositiveInt = 4096


class PipelineConfig(Section):
    """One runnable scenario: where data comes from and how each stage runs."""

    name: str
    output_dir: str = "runs/default"
    source: SourceConfig
    simulator: SimulatorConfig = SimulatorConfig()
    spark: SparkConfig = SparkConfig()
    prepare: PrepareConfig = PrepareConfig()
    embedding: EmbeddingConfig = EmbeddingConfig()
    model: ModelConfig = ModelConfig()
    sesa: SesaConfig = SesaConfig()
    train: TrainConfig = TrainConfig()
    serving: ServingConfig = ServingConfig()
    # Omni-modal item embeddings: the pipeline's ``omni`` stage trains and exports them into
    # ``<output_dir>/omni_bundles`` when this section is present (or model.kind is omni).
    omni: OmniConfig | None = None

    @property
    def out(self) -> Path:
        return Path(self.output_dir)


def _key_path(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for p in loc:
        if isinstance(p, int):
            parts.append(f"[{p}]")
        elif parts:
            parts.append(f".{p}")
        else:
            parts.append(str(p))
    return "".join(parts) or "<root>"


def parse_config(data: object, origin: str = "<config>") -> PipelineConfig:
    """Validate a parsed YAML mapping; errors list every bad key as ``origin: key.path: reason``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: top level must be a mapping, got {type(data).__name__}")
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        lines = [f"{origin}: {_key_path(err['loc'])}: {_reason(err)}" for err in e.errors()]
        raise ConfigError("\n".join(lines)) from None


def _reason(err: dict) -> str:
    """One pydantic error as a short reason, with the offending value for type errors."""
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "missing":
        return "required key is missing"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] != "value_error" and not isinstance(err.get("input"), dict | list):
        got = repr(err.get("input"))
        msg += f" (got {got if len(got) <= 60 else got[:57] + '...'})"
    return msg


def load_config(path: str | Path, overrides: dict[str, object] | None = None) -> PipelineConfig:
    """Load and validate a YAML config; ``overrides`` maps dotted keys to values."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        data = {}  # an empty file: every required key is then reported as missing
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    for dotted, value in (overrides or {}).items():
        node = data
        *head, last = dotted.split(".")
        for i, key in enumerate(head):
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                where = ".".join(head[: i + 1])
                raise ConfigError(
                    f"{path}: override {dotted}: {where} is a {type(node).__name__}, not a mapping"
                )
        node[last] = value
    return parse_config(data, origin=str(path))

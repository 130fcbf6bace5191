"""load_config: typed sections, every error named by file and dotted key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys.config import ConfigError, PipelineConfig, load_config, parse_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

MINIMAL = "name: t\nsource: {kind: simulator}\n"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(text)
    return path


def _error_lines(path: Path, overrides: dict[str, object] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_config(path, overrides)
    return str(e.value).splitlines()


@pytest.mark.parametrize("name", ["movielens.yaml", "simulated.yaml"])
def test_every_shipped_config_loads(name: str):
    cfg = load_config(CONFIGS / name)
    assert isinstance(cfg, PipelineConfig)
    assert cfg.name == name.removesuffix(".yaml")


def test_shipped_movielens_config_points_at_the_bundled_data():
    cfg = load_config(CONFIGS / "movielens.yaml")
    assert (cfg.source.kind, cfg.source.path) == ("movielens", "data/ml-latest-small")
    assert cfg.prepare.label.drop_between == 3.0


def test_a_minimal_config_gets_the_defaults(tmp_path: Path):
    cfg = load_config(_write(tmp_path, MINIMAL))
    assert cfg.train.batch_size == 1024 and cfg.source.path is None
    assert cfg.out == Path("runs/default")


def test_an_unknown_key_is_named_with_file_and_dotted_path(tmp_path: Path):
    path = _write(tmp_path, MINIMAL + "train: {batch_sise: 512}\n")
    assert _error_lines(path) == [f"{path}: train.batch_sise: unknown key"]


def test_an_unknown_key_deep_in_a_nested_section_has_the_full_path(tmp_path: Path):
    path = _write(tmp_path, MINIMAL + "prepare: {label: {kind: rating, treshold: 4}}\n")
    assert _error_lines(path) == [f"{path}: prepare.label.treshold: unknown key"]


def test_a_wrongly_typed_value_is_not_coerced_and_the_error_shows_it(tmp_path: Path):
    path = _write(tmp_path, MINIMAL + "train: {batch_size: '512'}\n")
    (line,) = _error_lines(path)
    assert line.startswith(f"{path}: train.batch_size: ")
    assert "integer" in line and "'512'" in line


def test_a_wrong_type_inside_a_list_names_the_index(tmp_path: Path):
    path = _write(tmp_path, MINIMAL + "model: {mlp: [64, big]}\n")
    (line,) = _error_lines(path)
    assert line.startswith(f"{path}: model.mlp[1]: ")


def test_a_missing_required_key_is_named(tmp_path: Path):
    path = _write(tmp_path, "source: {kind: simulator}\n")
    assert _error_lines(path) == [f"{path}: name: required key is missing"]


def test_a_missing_required_nested_key_is_named_with_its_path(tmp_path: Path):
    path = _write(tmp_path, "name: t\nsource: {path: data}\n")
    assert _error_lines(path) == [f"{path}: source.kind: required key is missing"]


def test_movielens_without_a_path_is_reported_at_source_path(tmp_path: Path):
    path = _write(tmp_path, "name: t\nsource: {kind: movielens}\n")
    (line,) = _error_lines(path)
    assert line.startswith(f"{path}: source.path: required when source.kind is 'movielens'")


def test_every_error_is_listed_not_only_the_first(tmp_path: Path):
    path = _write(
        tmp_path,
        "source: {kind: simulator}\n"
        "train: {batch_sise: 512, epochs: many}\n"
        "embedding: {kind: magic}\n"
        "spark: {shuffle_partitions: 8, colour: blue}\n",
    )
    lines = _error_lines(path)
    keys = sorted(line.removeprefix(f"{path}: ").split(":")[0] for line in lines)
    assert keys == [
        "embedding.kind",
        "name",
        "spark.colour",
        "train.batch_sise",
        "train.epochs",
    ]
    assert all(line.startswith(f"{path}: ") for line in lines)


def test_an_out_of_range_value_names_the_key(tmp_path: Path):
    path = _write(tmp_path, MINIMAL + "prepare: {history_length: -1}\n")
    (line,) = _error_lines(path)
    assert line.startswith(f"{path}: prepare.history_length: ") and "0" in line


def test_overrides_replace_nested_values_and_create_missing_sections(tmp_path: Path):
    cfg = load_config(
        CONFIGS / "movielens.yaml",
        {"train.epochs": 1, "prepare.label.threshold": 4.5, "serving.port": 6000},
    )
    assert cfg.train.epochs == 1
    assert cfg.prepare.label.threshold == 4.5
    assert cfg.prepare.label.drop_between == 3.0  # siblings of an override are kept
    assert cfg.serving.port == 6000


def test_overrides_are_validated_like_file_values(tmp_path: Path):
    path = _write(tmp_path, MINIMAL)
    lines = _error_lines(path, {"train.epochs": "two", "train.epoch": 2})
    assert sorted(line.split(": ")[1] for line in lines) == ["train.epoch", "train.epochs"]


def test_an_override_through_a_scalar_is_an_error_naming_the_key(tmp_path: Path):
    path = _write(tmp_path, MINIMAL + "train: 5\n")
    (line,) = _error_lines(path, {"train.epochs": 2})
    assert line.startswith(f"{path}: override train.epochs: train is a int")


def test_an_empty_file_reports_the_missing_required_keys(tmp_path: Path):
    path = _write(tmp_path, "")
    assert sorted(_error_lines(path)) == [
        f"{path}: name: required key is missing",
        f"{path}: source: required key is missing",
    ]


def test_a_non_mapping_file_and_a_missing_file_name_the_file(tmp_path: Path):
    path = _write(tmp_path, "- a\n- b\n")
    assert _error_lines(path) == [f"{path}: top level must be a mapping, got list"]
    missing = tmp_path / "nope.yaml"
    assert _error_lines(missing) == [f"{missing}: file not found"]


def test_invalid_yaml_names_the_file(tmp_path: Path):
    path = _write(tmp_path, "name: [unclosed\n")
    (first, *_) = _error_lines(path)
    assert first.startswith(f"{path}: not valid YAML")


def test_parse_config_uses_the_given_origin():
    with pytest.raises(ConfigError, match=r"^cli: train\.lr: unknown key"):
        parse_config({"name": "t", "source": {"kind": "simulator"}, "train": {"lr": 1}}, "cli")


def test_sections_are_frozen():
    cfg = parse_config({"name": "t", "source": {"kind": "simulator"}})
    with pytest.raises(ValueError):
        cfg.train.epochs = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("section", "key", "value", "bound"),
    [
        ("train", "epochs", -1, "greater than or equal to 1"),
        ("train", "epochs", 0, "greater than or equal to 1"),
        ("train", "batch_size", -5, "greater than or equal to 1"),
        ("train", "lr_dense", -0.001, "greater than 0"),
        ("train", "lr_embedding", 0.0, "greater than 0"),
        ("train", "weight_decay", -0.5, "greater than or equal to 0"),
        ("train", "patience", 0, "greater than or equal to 1"),
        ("train", "prefetch", -1, "greater than or equal to 0"),
        ("train", "max_steps", 0, "greater than or equal to 1"),
        ("train", "seed", -1, "greater than or equal to 0"),
        ("train", "lr_dense", float("nan"), "finite number"),
        ("model", "tower_dim", 0, "greater than or equal to 1"),
        ("model", "temperature", 0.0, "greater than 0"),
        ("model", "cross_layers", 0, "greater than or equal to 1"),
        ("embedding", "param_budget", -100, "greater than or equal to 1"),
        ("embedding", "init_scale", -0.05, "greater than 0"),
        ("simulator", "num_users", 0, "greater than or equal to 1"),
        ("simulator", "days", -3, "greater than or equal to 1"),
        ("spark", "shuffle_partitions", 0, "greater than or equal to 1"),
        ("serving", "port", 70000, "less than or equal to 65535"),
    ],
)
def test_an_out_of_bounds_number_is_refused_at_load_naming_file_and_key(
    tmp_path: Path, section: str, key: str, value: object, bound: str
):
    path = _write(tmp_path, MINIMAL + f"{section}: {{{key}: {value}}}\n".replace("nan", ".nan"))
    (line,) = _error_lines(path)
    assert line.startswith(f"{path}: {section}.{key}: Input should be ")
    assert bound in line


def test_a_bound_inside_a_list_or_mapping_names_the_element(tmp_path: Path):
    path = _write(tmp_path, MINIMAL + "model: {mlp: [64, 0]}\nembedding: {probes: {s_item: -2}}\n")
    lines = sorted(_error_lines(path))
    assert [line.split(": ")[1] for line in lines] == ["embedding.probes.s_item", "model.mlp[1]"]


def test_crossed_bounds_between_two_keys_are_named_at_the_second(tmp_path: Path):
    path = _write(
        tmp_path,
        MINIMAL + "prepare: {min_value: 5, max_value: 1, label: {threshold: 3, drop_between: 4}}\n",
    )
    assert sorted(_error_lines(path)) == [
        f"{path}: prepare.label.drop_between: must be at most threshold (3.0)",
        f"{path}: prepare.max_value: must be at least min_value (5.0)",
    ]


def test_an_out_of_bounds_override_is_refused_like_a_file_value(tmp_path: Path):
    path = _write(tmp_path, MINIMAL)
    (line,) = _error_lines(path, {"train.batch_size": -5})
    assert line.startswith(f"{path}: train.batch_size: Input should be greater than or equal to 1")


def test_the_event_time_window_is_a_pair_of_dates_in_order():
    cfg = load_config(
        "configs/movielens.yaml", {"prepare.min_ts": "2000-01-01", "prepare.max_ts": "2001-01-01"}
    )
    assert cfg.prepare.ts_window_s() == (946_684_800, 978_307_200)
    with pytest.raises(ConfigError, match=r"prepare\.max_ts: must be after min_ts \(2000-01-01\)"):
        load_config(
            "configs/movielens.yaml",
            {"prepare.min_ts": "2000-01-01", "prepare.max_ts": "1999-01-01"},
        )

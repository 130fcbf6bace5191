"""Where benchmarks write their JSON, and how unified_pareto.py reads its datasets."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import result_file  # noqa: E402
import unified_pareto  # noqa: E402


@pytest.fixture
def results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A results directory holding one committed full result, ``demo.json``."""
    monkeypatch.setattr(result_file, "RESULTS", tmp_path)
    (tmp_path / "demo.json").write_text("{}")
    return tmp_path


def test_a_full_run_refuses_to_replace_committed_results(results: Path) -> None:
    with pytest.raises(SystemExit, match="--out .*demo.json"):
        result_file.output_path("demo", quick=False, out=None)


def test_a_full_run_replaces_them_when_out_names_them(results: Path) -> None:
    assert (
        result_file.output_path("demo", False, str(results / "demo.json")) == results / "demo.json"
    )


def test_quick_runs_write_their_own_file(results: Path) -> None:
    assert result_file.output_path("demo", quick=True, out=None) == results / "demo_quick.json"
    assert result_file.output_path("other", quick=False, out=None) == results / "other.json"


def test_out_may_point_outside_the_repository(tmp_path: Path) -> None:
    out = tmp_path / "elsewhere" / "r.json"
    assert result_file.shown(out) == str(out)  # no "is not in the subpath" error
    result_file.write_result(out, {"a": 1})
    assert json.loads(out.read_text()) == {"a": 1}
    assert [p.name for p in out.parent.iterdir()] == ["r.json"]  # no temporary left
    assert result_file.shown(ROOT / "benchmarks" / "x.json") == "benchmarks/x.json"


def test_pareto_config_outside_the_registry_is_a_dataset_named_after_it(tmp_path: Path) -> None:
    config = tmp_path / "heldout.yaml"
    text = (ROOT / "configs" / "movielens.yaml").read_text()
    config.write_text(text.replace("name: movielens", "name: heldout"))
    registry = unified_pareto.dataset_registry(str(config))
    assert list(registry) == ["heldout"]
    assert registry["heldout"].config == str(config.resolve())
    assert unified_pareto.dataset_registry(None) is unified_pareto.DATASETS


def test_pareto_sets_split_into_method_and_pipeline_overrides() -> None:
    methods, pipeline = unified_pareto.split_sets(
        ["train.epochs=2", "embedding.dim=4", "source.path=/data/ml-1m", "output_dir=/tmp/x"]
    )
    assert methods == {"embedding": {"dim": 4}, "train": {"epochs": 2}}
    assert pipeline == {"source.path": "/data/ml-1m", "output_dir": "/tmp/x"}
    with pytest.raises(SystemExit, match="SECTION.KEY=VALUE"):
        unified_pareto.split_sets(["no-equals-sign"])

"""The ``recsys`` command: help, config errors and stages that are not built yet."""

import subprocess
import sys
from pathlib import Path

from recsys.cli import PIPELINE, STAGES, build_parser, main, stage_source
from recsys.config import load_config
from recsys.sources.raw_logs import RawLogs

ROOT = Path(__file__).resolve().parents[2]


def test_help_lists_every_stage() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "recsys.cli", "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0
    for stage in (
        "simulate",
        "prepare",
        "train",
        "evaluate",
        "export",
        "index",
        "serve",
        "pipeline",
    ):
        assert stage in out.stdout


def test_bad_config_key_fails_with_file_and_key_path(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("name: x\nsource: {kind: simulator}\ntrain: {batch_sise: 3}\n")
    assert main(["pipeline", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"{cfg}: train.batch_sise: unknown key" in err


def test_unknown_pipeline_stage_is_refused(capsys) -> None:
    code = main(["pipeline", "--config", str(ROOT / "configs/simulated.yaml"), "--stages", "nope"])
    assert code == 2
    assert "unknown ['nope']" in capsys.readouterr().err


def test_stages_not_built_yet_say_so_plainly(capsys) -> None:
    assert main(["serve", "--config", str(ROOT / "configs/simulated.yaml")]) == 2
    assert "not built yet" in capsys.readouterr().err


def test_overrides_reach_the_config() -> None:
    args = build_parser().parse_args(
        ["train", "--config", "c.yaml", "--set", "train.epochs=1", "--set", "model.mlp=[8, 4]"]
    )
    assert dict(args.overrides) == {"train.epochs": 1, "model.mlp": [8, 4]}


def test_pipeline_stages_are_all_known() -> None:
    assert set(PIPELINE) <= set(STAGES)


def test_source_max_item_tags_reaches_the_movielens_reader(tmp_path: Path) -> None:
    concepts = {}
    for tags in (20, 0):
        sets = {"output_dir": str(tmp_path / f"t{tags}"), "source.max_item_tags": tags}
        cfg = load_config(ROOT / "configs/movielens.yaml", sets)
        stage_source(cfg)
        items = RawLogs.read(tmp_path / f"t{tags}" / "raw").items
        concepts[tags] = [c for row in items["concepts"].to_pylist() for c in row or []]
    assert any(c.startswith("tag:") for c in concepts[20])
    assert concepts[0] and not any(c.startswith("tag:") for c in concepts[0])

"""Config and manifest bounds, through the real ``recsys`` command in a subprocess.

An impossible number in the config (``train.epochs: -1``, ``train.batch_size: -5``) is refused
when the config loads, naming the file and key, before any stage writes a file; an impossible
feature statistic in the manifest (a distinct count of 1e12; -5 and the others are unit
tests in tests/recsys/features/test_feature_spec.py) is refused before any table
is sized from it, naming the feature.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.recsys.conftest import write_examples

REPO = Path(__file__).resolve().parents[2]


def _recsys(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "recsys.cli", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _config(tmp_path: Path, train: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(
        f"name: t\noutput_dir: {tmp_path / 'run'}\nsource: {{kind: simulator}}\ntrain: {train}\n"
    )
    return path


@pytest.mark.parametrize(
    ("train", "key"), [("{epochs: -1}", "train.epochs"), ("{batch_size: -5}", "train.batch_size")]
)
def test_train_with_an_impossible_number_exits_2_naming_file_and_key_and_writes_nothing(
    tmp_path: Path, train: str, key: str
):
    config = _config(tmp_path, train)
    done = _recsys("train", "--config", str(config), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert f"recsys train: {config}: {key}: Input should be greater than or equal to 1" in (
        done.stderr
    )
    assert not (tmp_path / "run").exists()  # no checkpoint named, none half-written


def test_train_on_a_manifest_with_an_impossible_cardinality_exits_2_naming_the_feature(
    tmp_path: Path,
):
    distinct = 1e12  # collisionless tables of this many rows would need terabytes
    examples = tmp_path / "run" / "examples"
    manifest = write_examples(examples, n_rows=200, seed=1)
    manifest["features"]["stats"]["s_item"]["distinct"] = distinct
    (examples / "manifest.json").write_text(json.dumps(manifest))
    config = _config(tmp_path, "{epochs: 1, progress: false}")
    done = _recsys("train", "--config", str(config), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert f"{examples}/manifest.json: features.stats.s_item.distinct is {distinct!r}" in (
        done.stderr
    )
    checkpoints = tmp_path / "run" / "checkpoints"
    assert not (checkpoints / "best").exists() and not (checkpoints / "checkpoint").exists()

"""atomic_dir / atomic_file: a failed write never replaces the old content or leaves debris."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from recsys import atomic
from recsys.atomic import atomic_dir, atomic_file, write_json


class Boom(RuntimeError):
    pass


def _entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_atomic_file_writes_the_content_and_leaves_only_the_file(tmp_path: Path):
    target = tmp_path / "out.bin"
    with atomic_file(target) as f:
        f.write(b"new")
    assert target.read_bytes() == b"new"
    assert _entries(tmp_path) == ["out.bin"]


def test_an_exception_inside_atomic_file_keeps_the_old_content_and_no_temp_file(tmp_path: Path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(Boom), atomic_file(target, "w") as f:
        f.write("half of the new")
        raise Boom
    assert target.read_text() == "old"
    assert _entries(tmp_path) == ["out.txt"]


def test_an_exception_inside_atomic_file_creates_nothing_when_there_was_nothing(tmp_path: Path):
    with pytest.raises(Boom), atomic_file(tmp_path / "sub" / "out.txt", "w") as f:
        f.write("x")
        raise Boom
    assert _entries(tmp_path / "sub") == []


def test_atomic_dir_replaces_the_whole_directory_on_success(tmp_path: Path):
    target = tmp_path / "logs"
    target.mkdir()
    (target / "stale.parquet").write_text("stale")
    with atomic_dir(target) as tmp:
        assert tmp != target and tmp.parent == tmp_path
        (tmp / "events.parquet").write_text("fresh")
    assert _entries(target) == ["events.parquet"]
    assert _entries(tmp_path) == ["logs"]


def test_an_exception_inside_atomic_dir_keeps_the_old_directory_and_no_temp_dir(tmp_path: Path):
    target = tmp_path / "logs"
    target.mkdir()
    (target / "events.parquet").write_text("old")
    with pytest.raises(Boom), atomic_dir(target) as tmp:
        (tmp / "events.parquet").write_text("half")
        raise Boom
    assert _entries(target) == ["events.parquet"]
    assert (target / "events.parquet").read_text() == "old"
    assert _entries(tmp_path) == ["logs"]


def test_a_failed_final_rename_in_atomic_dir_puts_the_old_directory_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    target = tmp_path / "logs"
    target.mkdir()
    (target / "events.parquet").write_text("old")
    real_replace = os.replace

    def replace(src: str | Path, dst: str | Path) -> None:
        if Path(src).name.startswith(".logs.tmp-"):
            raise OSError("disk gone")
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(OSError, match="disk gone"), atomic_dir(target) as tmp:
        (tmp / "events.parquet").write_text("new")
    monkeypatch.undo()
    assert (target / "events.parquet").read_text() == "old"
    assert _entries(tmp_path) == ["logs"]  # neither the new temp dir nor the moved-aside old one


def test_write_json_is_sorted_indented_and_atomic(tmp_path: Path):
    path = tmp_path / "manifest.json"
    write_json(path, {"b": 1, "a": [1, 2]})
    assert json.loads(path.read_text()) == {"a": [1, 2], "b": 1}
    assert path.read_text().startswith('{\n  "a"')
    assert _entries(tmp_path) == ["manifest.json"]

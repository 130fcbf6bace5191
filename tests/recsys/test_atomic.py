"""atomic_dir / atomic_file: a failed write never replaces the old content or leaves debris."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
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


def test_a_failed_exchange_in_atomic_dir_keeps_the_old_directory_and_no_temp_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    target = tmp_path / "logs"
    target.mkdir()
    (target / "events.parquet").write_text("old")

    def exchange(a: str | Path, b: str | Path) -> None:
        raise OSError(f"exchange {a} <-> {b}: disk gone")

    monkeypatch.setattr(atomic, "exchange", exchange)
    with pytest.raises(OSError, match="disk gone"), atomic_dir(target) as tmp:
        (tmp / "events.parquet").write_text("new")
    monkeypatch.undo()
    assert (target / "events.parquet").read_text() == "old"
    assert _entries(tmp_path) == ["logs"]


def test_without_exchange_a_failed_final_rename_puts_the_old_directory_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    target = tmp_path / "logs"
    target.mkdir()
    (target / "events.parquet").write_text("old")
    real_replace = os.replace

    def no_exchange(a: str | Path, b: str | Path) -> None:
        raise atomic.ExchangeUnsupported(errno.EINVAL, "no exchange here")

    def replace(src: str | Path, dst: str | Path) -> None:
        if Path(src).name.startswith(".logs.tmp-"):
            raise OSError("disk gone")
        real_replace(src, dst)

    monkeypatch.setattr(atomic, "exchange", no_exchange)
    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(OSError, match="disk gone"), atomic_dir(target) as tmp:
        (tmp / "events.parquet").write_text("new")
    monkeypatch.undo()
    assert (target / "events.parquet").read_text() == "old"
    assert _entries(tmp_path) == ["logs"]  # neither the new temp dir nor the moved-aside old one


# A child process that replaces ``<dir>/logs`` in a loop (or pauses inside one replacement).
_WRITER = """
import sys, time
from pathlib import Path
from recsys.atomic import atomic_dir
target, rounds, pause = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
for k in range(rounds):
    with atomic_dir(target) as tmp:
        (tmp / "events.parquet").write_text(f"round {k}")
        if pause != "-":
            Path(pause).write_text("inside")
            time.sleep(60)
"""


def _writer(tmp_path: Path, rounds: int, pause: str = "-") -> subprocess.Popen:
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    return subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "logs"), str(rounds), pause],
        cwd=Path(__file__).resolve().parents[2],
    )


def test_a_reader_never_finds_the_directory_missing_while_it_is_replaced(tmp_path: Path):
    target = tmp_path / "logs"
    target.mkdir()
    (target / "events.parquet").write_text("round -1")
    writer = _writer(tmp_path, rounds=300)
    reads = misses = 0
    while writer.poll() is None:
        try:
            (target / "events.parquet").read_text()
        except FileNotFoundError:
            misses += 1
        reads += 1
    assert writer.returncode == 0
    assert reads > 100, "the writer finished before the reader could race it"
    assert misses == 0, f"{misses} of {reads} reads found no file"
    assert (target / "events.parquet").read_text() == "round 299"


def test_a_writer_killed_mid_write_leaves_the_old_directory_and_the_next_write_sweeps(
    tmp_path: Path,
):
    target = tmp_path / "logs"
    target.mkdir()
    (target / "events.parquet").write_text("old")
    inside = tmp_path / "inside"
    writer = _writer(tmp_path, rounds=1, pause=str(inside))
    deadline = time.monotonic() + 30
    while not inside.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert (target / "events.parquet").read_text() == "old"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".logs.tmp-")]
    assert len(leftovers) == 1
    with atomic_dir(target) as tmp:
        (tmp / "events.parquet").write_text("new")
    assert (target / "events.parquet").read_text() == "new"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".logs.")]


def test_a_live_writers_temporary_is_not_swept(tmp_path: Path):
    target = tmp_path / "logs"
    mine = tmp_path / f".logs.tmp-{os.getpid()}-abcdef12"
    mine.mkdir()
    dead = tmp_path / ".logs.tmp-999999999-abcdef12"
    dead.mkdir()
    assert atomic.sweep_temporaries(target) == [dead]
    assert mine.exists()


def test_write_json_is_sorted_indented_and_atomic(tmp_path: Path):
    path = tmp_path / "manifest.json"
    write_json(path, {"b": 1, "a": [1, 2]})
    assert json.loads(path.read_text()) == {"a": [1, 2], "b": 1}
    assert path.read_text().startswith('{\n  "a"')
    assert _entries(tmp_path) == ["manifest.json"]

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from recsys.training.run_lock import LOCK_FILE, RunLock, RunLockError


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_lock_on_a_held_directory_is_refused_naming_pid_and_host(tmp_path: Path) -> None:
    with RunLock(tmp_path):
        holder = json.loads((tmp_path / LOCK_FILE).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(RunLockError, match=f"pid {os.getpid()} on host {socket.gethostname()}"):
            RunLock(tmp_path).acquire()
    assert (tmp_path / LOCK_FILE).read_text() == ""  # released: no holder recorded
    with RunLock(tmp_path) as again:
        assert again.took_over is None


def test_a_lock_left_by_a_dead_process_on_this_host_is_taken_over(tmp_path: Path) -> None:
    dead = _dead_pid()
    record = {"pid": dead, "host": socket.gethostname(), "started": "2020-01-01T00:00:00Z"}
    (tmp_path / LOCK_FILE).write_text(json.dumps(record))
    with RunLock(tmp_path) as lock:
        assert lock.took_over == record
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_a_record_of_a_run_on_another_host_is_refused_naming_the_file_to_delete(
    tmp_path: Path,
) -> None:
    record = {"pid": 4242, "host": "not-" + socket.gethostname(), "started": "x"}
    (tmp_path / LOCK_FILE).write_text(json.dumps(record))
    with pytest.raises(RunLockError, match=f"on another host.*delete {tmp_path / LOCK_FILE}"):
        RunLock(tmp_path).acquire()

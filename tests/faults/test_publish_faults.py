"""Publishing Spark outputs under readers, kills and concurrent jobs (real processes).

Readers of ``<out>/examples/manifest.json`` must always find a complete release, the old one
or the new one; a job SIGKILLed anywhere in its publish step leaves the old output complete;
the next run sweeps what the killed one left; the quarantine always belongs to its examples.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spark_jobs.publication import PAUSE_ENV, OutputBusyError, Publication
from spark_jobs.storage import Storage

REPO = Path(__file__).resolve().parents[2]

# A job's publish step without Spark: each round stages a release whose manifest and quarantine
# report carry the round number, then publishes it. Argument: out dir, rounds.
_PUBLISHER = """
import json, sys
from spark_jobs.publication import Publication
from spark_jobs.storage import Storage
storage = Storage()
out, rounds = sys.argv[1], int(sys.argv[2])
with Publication(storage, out) as pub:
    for k in range(rounds):
        staging = pub.stage()
        storage.mkdirs(f"{staging}/examples/split=train")
        storage.write_text(f"{staging}/examples/split=train/part-0.parquet", "rows of %d" % k)
        storage.write_json(f"{staging}/quarantine/report.json", {"round": k})
        storage.write_json(f"{staging}/examples/manifest.json", {"round": k})
        pub.publish(staging)
"""


def _publisher(tmp_path: Path, out: Path, rounds: int, pause: str | None = None):  # noqa: ANN202
    script = tmp_path / "publisher.py"
    script.write_text(_PUBLISHER)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop(PAUSE_ENV, None)
    if pause is not None:
        env[PAUSE_ENV] = pause
    return subprocess.Popen([sys.executable, str(script), str(out), str(rounds)], cwd=REPO, env=env)


def _publish_once(out: Path, tmp_path: Path) -> dict:
    proc = _publisher(tmp_path, out, rounds=1)
    assert proc.wait(timeout=60) == 0
    return json.loads((out / "examples" / "manifest.json").read_text())


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the job exited ({proc.returncode}) before pausing"
        assert time.monotonic() < deadline, f"the job never reached {path.name}"
        time.sleep(0.01)


def test_a_poller_never_misses_the_manifest_while_the_job_publishes_repeatedly(tmp_path: Path):
    out = tmp_path / "out"
    _publish_once(out, tmp_path)
    publisher = _publisher(tmp_path, out, rounds=60)
    reads = misses = mismatched = 0
    rounds_seen = set()
    while publisher.poll() is None:
        try:
            rounds_seen.add(json.loads((out / "examples" / "manifest.json").read_text())["round"])
        except FileNotFoundError:
            misses += 1
        # Through one resolution of the pointer, examples and quarantine are one release.
        release = Path(os.path.realpath(out / "current"))
        try:
            manifest = json.loads((release / "examples" / "manifest.json").read_text())
            report = json.loads((release / "quarantine" / "report.json").read_text())
            mismatched += manifest["round"] != report["round"]
        except FileNotFoundError:
            pass  # a release two publishes old is swept; a reader keeps at most one behind
        reads += 1
    assert publisher.returncode == 0
    assert len(rounds_seen) > 5, "the poller never overlapped the publishes"
    assert misses == 0, f"{misses} of {reads} reads found no manifest"
    assert mismatched == 0
    assert json.loads((out / "examples" / "manifest.json").read_text())["round"] == 59


@pytest.mark.parametrize("step", ["staged", "released", "switched"])
def test_a_job_killed_in_the_publish_step_leaves_a_complete_output_and_the_next_run_sweeps(
    tmp_path: Path, step: str
):
    out = tmp_path / "out"
    _publish_once(out, tmp_path)  # the old output: round 0
    old_release = os.path.realpath(out / "current")
    paused = tmp_path / "paused"
    job = _publisher(tmp_path, out, rounds=1, pause=f"{step}:{paused}")
    _wait_for(paused, job)
    job.send_signal(signal.SIGKILL)
    job.wait()

    manifest = json.loads((out / "examples" / "manifest.json").read_text())
    report = json.loads((out / "quarantine" / "report.json").read_text())
    assert manifest == report  # the quarantine is the one of these examples
    if step == "switched":  # the pointer had moved: the new output, complete
        assert os.path.realpath(out / "current") != old_release
    else:
        assert os.path.realpath(out / "current") == old_release
    assert (out / "examples" / "split=train" / "part-0.parquet").read_text() == "rows of 0"

    _publish_once(out, tmp_path)  # the next run
    releases = sorted(p.name for p in (out / "releases").iterdir())
    pointed = {Path(os.path.realpath(out / n)).name for n in ("current", "previous")}
    assert set(releases) == pointed and len(releases) == 2
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name or "staging" in p.name]


def test_a_second_job_on_the_same_output_is_refused_naming_the_holder(tmp_path: Path):
    storage = Storage()
    with Publication(storage, str(tmp_path / "out")):
        with pytest.raises(OutputBusyError, match=rf"pid {os.getpid()} on "):
            Publication(storage, str(tmp_path / "out")).open()
    with Publication(storage, str(tmp_path / "out")):  # released on exit
        pass


def test_an_output_of_the_earlier_layout_is_converted_without_losing_it(tmp_path: Path):
    out = tmp_path / "out"
    (out / "examples").mkdir(parents=True)
    (out / "examples" / "manifest.json").write_text('{"round": "old"}')
    (out / ".prepare-staging-1234abcd").mkdir()  # left by a killed run of the earlier layout
    manifest = _publish_once(out, tmp_path)
    assert manifest == {"round": 0}
    assert (out / "examples").is_symlink() and (out / "quarantine").is_symlink()
    assert not (out / ".prepare-staging-1234abcd").exists()


def test_off_local_disks_the_pointer_is_a_file_naming_a_complete_release(tmp_path: Path):
    storage = Storage()
    out = str(tmp_path / "out")
    with Publication(storage, out, pointer="file") as pub:
        for k in range(3):
            staging = pub.stage()
            storage.write_json(f"{staging}/quarantine/report.json", {"round": k})
            storage.write_json(f"{staging}/examples/manifest.json", {"round": k})
            release = pub.publish(staging)
        assert pub.current_path() == release
    assert (tmp_path / "out" / "_CURRENT").read_text().strip() == Path(release).name
    assert json.loads(Path(release, "examples", "manifest.json").read_text()) == {"round": 2}
    assert len(list((tmp_path / "out" / "releases").iterdir())) == 2
    assert not (tmp_path / "out" / "examples").exists()  # readers go through the pointer


# ----------------------------------------------------------------------------- the real job

SPARK = {
    "master": "local[2]",
    "shuffle_partitions": 2,
    "extra": {"spark.sql.adaptive.enabled": "false"},  # tiny input: no extra stage jobs
}
PREPARE = {
    "label": {"kind": "rating", "threshold": 4.0},
    "split": {"valid_from": "2024-01-03", "test_from": "2024-01-04"},
    "history_length": 1,
}


def _write_raw(raw: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    raw.mkdir(parents=True)
    rows = [
        {"user_id": f"u{u}", "item_id": f"i{i}", "ts": f"2024-01-0{d}T10:00:00Z"}
        | {"event": "rating", "value": 3.0 + (u + i) % 3}
        for u in range(3)
        for i, d in ((1, 1), (2, 2), (1, 3), (2, 4))
    ]
    (raw / "events.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.table({"item_id": ["i1", "i2"], "title": ["A", "B"]}), raw / "items.parquet")


@pytest.mark.slow
def test_the_spark_job_killed_between_release_and_pointer_keeps_the_old_output(tmp_path: Path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    _write_raw(raw)
    before = _publish_once(out, tmp_path)  # an old complete output
    old_release = os.path.realpath(out / "current")

    data = {"name": "kill", "source": {"kind": "movielens", "path": str(raw)}}
    data |= {"prepare": PREPARE, "spark": SPARK}
    config = tmp_path / "kill.yaml"
    config.write_text(json.dumps(data))  # JSON is YAML
    paused = tmp_path / "paused"
    env = {**os.environ, PAUSE_ENV: f"released:{paused}", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, str(REPO / "spark_jobs" / "build_training_data.py")]
    cmd += ["--config", str(config), "--raw", str(raw), "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True)
    try:
        _wait_for(paused, proc, timeout=240)
        # The job's complete release is in place, the pointer not yet switched.
        (orphan,) = [p for p in (out / "releases").iterdir() if str(p) != old_release]
        assert json.loads((orphan / "examples" / "manifest.json").read_text())["counts"]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its JVM: this test's own group
        proc.wait()
    assert json.loads((out / "examples" / "manifest.json").read_text()) == before
    assert os.path.realpath(out / "current") == old_release
    with Publication(Storage(), str(out)) as pub:  # what the next run does first
        assert pub.current_id() == Path(old_release).name
    assert [str(p) for p in (out / "releases").iterdir()] == [old_release]

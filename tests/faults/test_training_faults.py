"""Training runs racing for one run directory, and runs killed while holding it.

Real ``python -m recsys.cli train`` processes: a second run into a directory a live run holds
is refused naming the holder's PID and host (the holder is paused with SIGSTOP so the two
really overlap) and the files left are the holder's; a run killed with SIGKILL leaves a stale
lock that the next run takes over, resuming from the killed run's last checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from sklearn.metrics import roc_auc_score

from recsys.config import parse_config
from recsys.features.batcher import table_to_batch
from recsys.training.checkpoint import load_model_weights, read_state
from recsys.training.model_factory import build_model, read_spec
from recsys.training.run_lock import LOCK_FILE
from tests.recsys.conftest import write_examples

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _config(tmp_path: Path, name: str, **train: object) -> Path:
    settings = {"batch_size": 32, "epochs": 1, "progress": False, "num_threads": 1, **train}
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        json.dumps(  # JSON is YAML
            {
                "name": name,
                "output_dir": str(tmp_path / "run"),
                "source": {"kind": "simulator"},
                "embedding": {"dim": 8},
                "model": {"kind": "ranker", "mlp": [16], "cross_layers": 1},
                "train": settings,
            }
        )
    )
    return path


def _train(config: Path) -> list[str]:
    return [sys.executable, "-m", "recsys.cli", "train", "--config", str(config)]


def _wait_for(condition, what: str, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"run exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _holder(lock: Path) -> dict | None:
    try:
        text = lock.read_text()
        return json.loads(text) if text.strip() else None
    except (FileNotFoundError, ValueError):
        return None


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    write_examples(tmp_path / "run" / "examples", n_rows=2000, seed=0)
    return tmp_path / "run"


@pytest.mark.slow
def test_a_second_train_into_a_held_directory_is_refused_and_the_files_hold_the_first_runs_model(
    tmp_path: Path, run_dir: Path
) -> None:
    lock = run_dir / "checkpoints" / LOCK_FILE
    first = subprocess.Popen(
        _train(_config(tmp_path, "a", epochs=2)), env=ENV, cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _wait_for(lambda: (_holder(lock) or {}).get("pid") == first.pid, "the lock", first)
        os.kill(first.pid, signal.SIGSTOP)  # hold it mid-run while the second run starts
        try:
            second = subprocess.run(
                _train(_config(tmp_path, "b", epochs=2, seed=7)), env=ENV, cwd=tmp_path,
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
        finally:
            os.kill(first.pid, signal.SIGCONT)
        out, err = first.communicate(timeout=180)
    finally:
        first.kill()
    assert second.returncode == 2, second.stderr[-2000:]
    assert f"pid {first.pid} on host {socket.gethostname()}" in second.stderr
    assert first.returncode == 0, err[-2000:]

    reported = json.loads(out)
    checkpoints = run_dir / "checkpoints"
    assert json.loads((checkpoints / "metrics.json").read_text()) == reported["epochs"]
    best, _ = read_state(checkpoints / "best")
    assert best.config["train"]["seed"] == 0 and best.best_metric == reported["valid_auc"]
    # the weights in best/ score the validation split with the AUC the first run reported
    cfg = parse_config(best.config)
    spec = read_spec(run_dir / "examples")
    model = build_model(cfg, spec, run_dir / "examples").eval()
    model.load_state_dict(load_model_weights(checkpoints / "best"))
    batch = table_to_batch(pq.read_table(run_dir / "examples" / "split=valid"), spec)
    with torch.no_grad():
        probs = torch.sigmoid(model(batch.sparse, batch.dense).logits).numpy()
    epoch = reported["epochs"][reported["best_epoch"]]
    exact = roc_auc_score(batch.labels.numpy(), probs)
    assert abs(exact - reported["valid_auc"]) <= epoch["valid_auc_max_error"] + 1e-9
    assert _holder(lock) is None  # released on exit


@pytest.mark.slow
def test_a_run_killed_holding_the_lock_leaves_a_stale_lock_the_next_run_takes_over(
    tmp_path: Path, run_dir: Path
) -> None:
    lock = run_dir / "checkpoints" / LOCK_FILE
    state = run_dir / "checkpoints" / "checkpoint" / "state.json"
    config = _config(tmp_path, "a", checkpoint_every=5)
    killed = subprocess.Popen(
        _train(config), env=ENV, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        _wait_for(state.exists, "a checkpoint", killed)
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
    assert killed.returncode == -signal.SIGKILL
    assert _holder(lock)["pid"] == killed.pid  # the record the dead run left behind
    saved, _ = read_state(run_dir / "checkpoints" / "checkpoint")
    assert 0 < saved.epoch_examples < 1600

    done = subprocess.run(_train(config), env=ENV, cwd=tmp_path, capture_output=True, text=True,
                          timeout=180)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "taking over the stale lock" in done.stderr and f"pid {killed.pid}" in done.stderr
    reported = json.loads(done.stdout)
    # resumed where the killed run's checkpoint stood: the epoch's 1600 rows in 50 steps
    assert reported["steps"] == 50 and reported["epochs"][0]["train_examples"] == 1600.0
    assert _holder(lock) is None

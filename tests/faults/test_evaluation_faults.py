"""An evaluation killed with SIGKILL while it writes its outputs leaves the previous
``metrics.json`` whole; the next run replaces it with a complete one and sweeps the dead
writer's temporary files. A real ``python`` process runs ``evaluate_bundle``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recsys.config import parse_config
from recsys.training import export, train
from tests.recsys.conftest import write_examples

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
CONFIG = {
    "name": "t",
    "source": {"kind": "simulator"},
    "embedding": {"dim": 8},
    "model": {"kind": "ranker", "mlp": [16], "cross_layers": 1},
    "train": {"batch_size": 128, "epochs": 1, "progress": False, "num_threads": 1},
}
SCRIPT = """
import json, sys
from recsys.config import parse_config
from recsys.evaluation.evaluate import evaluate_bundle
cfg = parse_config(json.loads(sys.argv[1]))
evaluate_bundle(cfg, sys.argv[2], sys.argv[3], sys.argv[4], replicates=int(sys.argv[5]),
                progress=False)
"""


def _evaluate(bundle: Path, examples: Path, out: Path, replicates: int) -> subprocess.Popen:
    args = [json.dumps(CONFIG), str(bundle), str(examples), str(out), str(replicates)]
    return subprocess.Popen([sys.executable, "-c", SCRIPT, *args], env=ENV, cwd=REPO)


@pytest.mark.slow
def test_a_killed_evaluation_leaves_the_previous_metrics_whole(tmp_path: Path) -> None:
    examples = tmp_path / "examples"
    write_examples(examples, n_rows=1500, seed=1)
    cfg = parse_config(CONFIG)
    train(cfg, examples, tmp_path / "run", resume=False)
    bundle = export(cfg, tmp_path / "run", tmp_path / "bundles", version="v1")
    out = tmp_path / "evaluation"
    out.mkdir()
    (out / "metrics.json").write_text('{"previous": true}\n')

    proc = _evaluate(bundle, examples, out, replicates=20)
    deadline = time.monotonic() + 120
    while not (out / "roc.png").exists():  # the report is drawn just before metrics.json
        assert proc.poll() is None, "the evaluation ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((out / "metrics.json").read_text()) == {"previous": True}

    again = _evaluate(bundle, examples, out, replicates=20)
    assert again.wait(timeout=180) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["version"] == "v1" and 0 <= metrics["overall"]["auc"] <= 1
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]

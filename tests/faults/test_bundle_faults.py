"""Bundle faults: concurrent and killed exports, tampered or incomplete bundles.

Concurrent exports run in real processes released at the same instant by a file barrier;
a killed export is a real process SIGKILLed while it writes. Every damaged bundle must be
refused with a ``BundleError`` naming the file at fault, and a tampered pickle is never run.
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
import torch

from recsys.bundle import META, WEIGHTS, BundleError, _sha256, export_bundle, load_bundle
from tests.recsys.id_embedding import KIND, IdEmbedding, register

REPO = Path(__file__).resolve().parents[2]
KWARGS = {"num_buckets": 31, "dim": 4, "salt": 5}

# One exporter process: build IdEmbedding from a seed, signal ready, wait for "go", export.
EXPORTER = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
import torch
from recsys.bundle import BundleError, export_bundle
from tests.recsys.id_embedding import IdEmbedding, register
register()
root, barrier, seed, version, block = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), \
    sys.argv[4] or None, sys.argv[5] == "block"
torch.manual_seed(seed)
model = IdEmbedding(**{kwargs!r})
def stall(path):
    path.write_text("partial")
    (barrier / "writing").touch()
    time.sleep(120)
(barrier / f"ready-{{seed}}").touch()
while not (barrier / "go").exists():
    time.sleep(0.001)
try:
    out = export_bundle(root, model, "id_embedding", {kwargs!r}, version=version,
                        extra_files={{"index.bin": stall}} if block else None)
    print(json.dumps({{"path": str(out)}}))
except BundleError as e:
    print(json.dumps({{"error": str(e)}}))
"""


@pytest.fixture(autouse=True)
def _id_embedding_kind() -> None:
    register()


def _model(seed: int) -> IdEmbedding:
    torch.manual_seed(seed)
    return IdEmbedding(**KWARGS)


def _start(root: Path, barrier: Path, seed: int, version: str = "", block: bool = False):
    code = EXPORTER.format(repo=str(REPO), kwargs=KWARGS)
    args = [sys.executable, "-c", code, str(root), str(barrier), str(seed), version]
    return subprocess.Popen(
        [*args, "block" if block else "run"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def _wait_for(path: Path, procs: list[subprocess.Popen], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            pytest.fail(f"exporter exited early: {dead[0].stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {path.name}")
        time.sleep(0.01)


def _race(tmp_path: Path, seeds: tuple[int, int], version: str = "") -> list[dict]:
    """Run two exporters released together into one bundle root; their JSON results."""
    root, barrier = tmp_path / "bundles", tmp_path / "barrier"
    barrier.mkdir()
    procs = [_start(root, barrier, s, version) for s in seeds]
    for s in set(seeds):
        _wait_for(barrier / f"ready-{s}", procs)
    (barrier / "go").touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()[-2000:]
        results.append(json.loads(out.decode().strip().splitlines()[-1]))
    return results


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_bundle(path).model.state_dict()


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_two_concurrent_exports_get_two_versions_each_holding_its_own_model(tmp_path: Path):
    a, b = _race(tmp_path, (1, 2))
    assert a["path"] != b["path"]
    assert _same(_weights(Path(a["path"])), _model(1).state_dict())
    assert _same(_weights(Path(b["path"])), _model(2).state_dict())
    visible = sorted(p.name for p in (tmp_path / "bundles").iterdir())
    assert visible == sorted([Path(a["path"]).name, Path(b["path"]).name])


def test_two_concurrent_exports_of_the_same_model_get_two_versions(tmp_path: Path):
    a, b = _race(tmp_path, (3, 3))
    assert a["path"] != b["path"]
    for r in (a, b):
        assert _same(_weights(Path(r["path"])), _model(3).state_dict())


def test_two_concurrent_exports_to_one_explicit_version_keep_the_winner_intact(tmp_path: Path):
    results = _race(tmp_path, (4, 5), version="v1")
    winners = [r for r in results if "path" in r]
    losers = [r for r in results if "error" in r]
    assert len(winners) == 1 and len(losers) == 1
    target = tmp_path / "bundles" / "v1"
    assert f"{target}: version already exists" in losers[0]["error"]
    seed = 4 if results[0] is winners[0] else 5
    assert _same(_weights(target), _model(seed).state_dict())
    assert [p.name for p in (tmp_path / "bundles").iterdir()] == ["v1"]


def test_an_export_killed_mid_write_publishes_nothing_and_the_next_export_sweeps_it(
    tmp_path: Path,
):
    root, barrier = tmp_path / "bundles", tmp_path / "barrier"
    barrier.mkdir()
    proc = _start(root, barrier, 6, block=True)
    _wait_for(barrier / "ready-6", [proc])
    (barrier / "go").touch()
    _wait_for(barrier / "writing", [proc])
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    leftovers = list(root.iterdir())
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".export-")  # nothing visible
    path = export_bundle(root, _model(7), KIND, KWARGS)
    assert list(root.iterdir()) == [path]  # the dead exporter's temporary directory is gone


# ---------------------------------------------------------------------------------------------
# damaged bundles


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return export_bundle(tmp_path / "bundles", _model(1), KIND, KWARGS, version="v1")


def _edit_meta(path: Path, **changes: object) -> None:
    meta = json.loads((path / META).read_text())
    meta.update(changes)
    (path / META).write_text(json.dumps(meta))


def _corrupt_weights(path: Path) -> None:
    """Replace weights.pt with a valid state_dict of absurd values (2.9e37)."""
    state = {k: torch.full_like(v, 2.9e37) for k, v in _model(1).state_dict().items()}
    torch.save(state, path / WEIGHTS)


def test_an_empty_file_list_with_corrupted_weights_is_refused(bundle: Path):
    _corrupt_weights(bundle)
    _edit_meta(bundle, files={})
    with pytest.raises(BundleError, match=rf"{bundle / META}: files: weights.pt is not listed"):
        load_bundle(bundle)


def test_corrupted_weights_with_the_old_checksum_are_refused_naming_the_file(bundle: Path):
    _corrupt_weights(bundle)
    with pytest.raises(BundleError, match=rf"{bundle / WEIGHTS}: checksum mismatch"):
        load_bundle(bundle)


def test_an_unlisted_file_is_refused_by_name(bundle: Path):
    (bundle / "extra.bin").write_bytes(b"\0" * 8)
    with pytest.raises(BundleError, match=r"not listed in bundle.json: extra.bin"):
        load_bundle(bundle)


def test_a_listed_file_that_is_missing_is_refused_by_name(bundle: Path):
    meta = json.loads((bundle / META).read_text())
    _edit_meta(bundle, files={**meta["files"], "index.bin": "0" * 64})
    with pytest.raises(BundleError, match=rf"{bundle / 'index.bin'}: listed in bundle.json"):
        load_bundle(bundle)


def test_a_missing_weights_file_is_refused_by_name(bundle: Path):
    (bundle / WEIGHTS).unlink()
    with pytest.raises(BundleError, match=rf"{bundle / WEIGHTS}: listed in bundle.json"):
        load_bundle(bundle)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "top level must be an object"),
        (b'{"format": 1}', "model.kind"),
        (b'{"format": 1, "model": "\xff"}', "not valid JSON"),
    ],
)
def test_a_malformed_bundle_json_is_refused_naming_it(bundle: Path, text: bytes, reason: str):
    (bundle / META).write_bytes(text)
    with pytest.raises(BundleError, match=rf"{bundle / META}: {reason}"):
        load_bundle(bundle)


def test_a_missing_bundle_json_is_refused_naming_it(bundle: Path):
    (bundle / META).unlink()
    with pytest.raises(BundleError, match=rf"{bundle / META}: no bundle.json"):
        load_bundle(bundle)


def test_a_file_list_escaping_the_bundle_is_refused(bundle: Path):
    meta = json.loads((bundle / META).read_text())
    _edit_meta(bundle, files={**meta["files"], "../v0/weights.pt": "0" * 64})
    with pytest.raises(BundleError, match=r"files: '../v0/weights.pt' is not a file"):
        load_bundle(bundle)


class _Payload:
    """Unpickling this runs ``open(marker, 'w')``: what an attacker's weights.pt would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # noqa: ANN204
        return (open, (self.marker, "w"))


def test_a_tampered_pickle_with_a_matching_checksum_is_refused_and_never_run(
    bundle: Path, tmp_path: Path
):
    marker = tmp_path / "pwned"
    torch.save({"tables.item.weight": _Payload(marker)}, bundle / WEIGHTS)
    meta = json.loads((bundle / META).read_text())
    _edit_meta(bundle, files={**meta["files"], WEIGHTS: _sha256(bundle / WEIGHTS)})
    with pytest.raises(BundleError, match=rf"{bundle / WEIGHTS}: not a plain state_dict"):
        load_bundle(bundle)
    assert not marker.exists()


def test_constructor_arguments_the_kind_rejects_are_a_bundle_error(bundle: Path):
    meta = json.loads((bundle / META).read_text())
    _edit_meta(bundle, model={**meta["model"], "kwargs": {"num_buckets": 31, "width": 4}})
    with pytest.raises(BundleError, match=rf"{bundle / META}: model.kwargs do not build"):
        load_bundle(bundle)


def test_weights_of_another_shape_are_a_bundle_error_naming_weights(bundle: Path):
    meta = json.loads((bundle / META).read_text())
    _edit_meta(bundle, model={**meta["model"], "kwargs": {**KWARGS, "dim": 8}})
    with pytest.raises(BundleError, match=rf"{bundle / WEIGHTS}: does not fit the model"):
        load_bundle(bundle)


def test_an_unknown_kind_in_bundle_json_is_a_bundle_error(bundle: Path):
    meta = json.loads((bundle / META).read_text())
    _edit_meta(bundle, model={**meta["model"], "kind": "os:system"})
    with pytest.raises(BundleError, match=rf"{bundle / META}: model.kind: unknown model kind"):
        load_bundle(bundle)

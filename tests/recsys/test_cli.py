"""The ``recsys`` command: help, config errors, stages not built yet, what it records and shows."""

import json
import logging
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

from recsys.cli import (
    CHATTY_LIBRARIES,
    PIPELINE,
    STAGES,
    build_parser,
    jvm_console_to,
    main,
    quiet_libraries,
    stage_source,
)
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


def test_serve_reads_its_config_and_names_a_bad_key(capsys) -> None:
    code = main(["serve", "--config", str(ROOT / "configs/serving.yaml"), "--set", "port=-1"])
    assert code == 2
    assert "configs/serving.yaml: port: Input should be greater than or equal to 0" in (
        capsys.readouterr().err
    )


def test_serve_runs_until_sigterm_and_then_exits_cleanly(tmp_path: Path) -> None:
    sets = ["port=0", f"embedder_bundles={tmp_path}", "items=null", "users=null"]
    cmd = [sys.executable, "-m", "recsys.cli", "serve", "--config", "configs/serving.yaml"]
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        line = ""
        while "recsys serving on 127.0.0.1:" not in line:  # waits for the bind, not a speed claim
            assert time.monotonic() < deadline, "server did not start"
            line = proc.stderr.readline()
            assert line or proc.poll() is None, f"server exited with {proc.returncode}"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


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


def test_pipeline_json_names_the_config_file_and_overrides(tmp_path: Path) -> None:
    config = tmp_path / "configs" / "mine.yaml"
    config.parent.mkdir()
    text = (ROOT / "configs/movielens.yaml").read_text()
    config.write_text(text.replace("data/ml-latest-small", str(ROOT / "data/ml-latest-small")))
    out = tmp_path / "run"
    code = main(
        ["pipeline", "--config", str(config), "--stages", "source", "--set", f"output_dir={out}"]
    )
    assert code == 0
    summary = json.loads((out / "pipeline.json").read_text())
    assert summary["config"] == "movielens"
    assert summary["config_file"] == str(config.resolve())
    assert summary["overrides"] == {"output_dir": str(out)}
    assert list(summary["stages"]) == ["source"]


def test_jvm_console_goes_to_the_log_file_and_python_stderr_comes_back(
    tmp_path: Path, capfd
) -> None:
    log_file = tmp_path / "logs" / "spark-console.log"
    with jvm_console_to(log_file):
        # A child process started inside the block (as the Spark JVM is) keeps the file.
        subprocess.run(["sh", "-c", "echo banner-out; echo banner-err >&2"], check=True)
    print("after", file=sys.stderr)
    captured = capfd.readouterr()
    assert "banner" not in captured.out + captured.err
    assert "after" in captured.err
    assert log_file.read_text().split() == ["banner-out", "banner-err"]


def test_quiet_libraries_hides_torchrec_warnings_but_not_ours() -> None:
    levels = {name: logging.getLogger(name).level for name in CHATTY_LIBRARIES}
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            quiet_libraries()
            for module in ("torchrec.distributed.planner", "fbgemm_gpu.split", "recsys.training"):
                warnings.warn_explicit(
                    "chatter", UserWarning, "x.py", 1, module=module, registry={}
                )
        assert [(str(w.message), w.filename) for w in seen] == [("chatter", "x.py")]
        assert len(seen) == 1
        assert not logging.getLogger("torchrec.distributed").isEnabledFor(logging.WARNING)
        assert logging.getLogger("recsys").isEnabledFor(logging.WARNING)
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def test_a_pipeline_that_rebuilt_the_examples_trains_from_scratch(monkeypatch, tmp_path) -> None:
    import recsys.cli as cli

    calls: list[bool] = []
    monkeypatch.setitem(cli.STAGES, "prepare", lambda cfg: {})
    monkeypatch.setitem(cli.STAGES, "train", lambda cfg, resume: calls.append(resume) or {})
    cfg = load_config(ROOT / "configs/movielens.yaml", {"output_dir": str(tmp_path)})
    cli.run_pipeline(cfg, ("prepare", "train"))  # new examples: old checkpoints cannot resume
    cli.run_pipeline(cfg, ("train",))  # same examples: an interrupted run continues
    cli.run_pipeline(cfg, ("train",), resume=False)  # --no-resume
    assert calls == [False, True, False]

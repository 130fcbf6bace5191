"""The ``recsys`` command: one subcommand per stage; ``pipeline`` runs them in order.

Stages that need Spark (``prepare``) import it lazily inside the subcommand, so the library
never imports pyspark or grpc (see docs/architecture.md).

The console shows the stages' own log lines and the summary. Without ``-v``, the Spark JVM's
console output (banners, start-up warnings) goes to ``<output_dir>/logs/spark-console.log``,
and TorchRec/FBGEMM/torch/py4j warnings and other libraries' info lines are hidden; ``-v``
shows everything.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

from recsys.config import ConfigError, PipelineConfig, load_config

log = logging.getLogger("recsys")


class StageError(RuntimeError):
    """A stage that cannot run; the message says which and why."""


def _paths(cfg: PipelineConfig) -> dict[str, Path]:
    out = cfg.out
    return {
        "raw": out / "raw",
        "examples": out / "examples",
        "checkpoints": out / "checkpoints",
        "bundles": out / "bundles",
    }


def stage_source(cfg: PipelineConfig) -> dict[str, Any]:
    """Load or simulate raw logs into ``<output_dir>/raw`` and validate them."""
    raw = _paths(cfg)["raw"]
    if cfg.source.kind == "simulator":
        from recsys.sources.simulator import run_simulate

        summary = run_simulate(cfg, raw)
    elif cfg.source.kind == "movielens":
        from recsys.sources.movielens import read_movielens

        logs = read_movielens(
            cfg.source.path,
            max_item_tags=cfg.source.max_item_tags,
            max_bad_fraction=cfg.prepare.max_bad_fraction,
            ts_window_s=cfg.prepare.ts_window_s(),
        )
        logs.write(raw)
        summary = logs.summary()
    else:  # criteo is ingested straight to examples by Spark in the prepare stage
        return {"skipped": "criteo source is read by the prepare stage"}
    from recsys.sources.raw_logs import RawLogs

    reports = RawLogs.read(raw).validate()
    for r in reports:
        log.info("%s", r)
    bad = [str(r) for r in reports if not r.ok]
    if bad:
        raise StageError("raw logs break the contract:\n" + "\n".join(bad))
    return {"raw_dir": str(raw), **summary}


@contextlib.contextmanager
def jvm_console_to(log_file: Path) -> Iterator[None]:
    """While the block runs, this process's stderr and stdout (file descriptors 2 and 1) point
    at ``log_file``, so a JVM started inside the block writes its console there for good;
    Python's own streams are restored on exit."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with open(log_file, "ab") as f:
        try:
            for fd in saved:
                os.dup2(f.fileno(), fd)
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)


@contextlib.contextmanager
def spark_session(cfg: PipelineConfig) -> Iterator[Any]:
    """The config's Spark session for one stage, its JVM console in ``logs/`` unless ``-v``;
    stopped afterwards (freeing the JVM's memory before training) unless it already ran."""
    from pyspark.sql import SparkSession

    from spark_jobs.session import build_session

    had_session = SparkSession.getActiveSession() is not None
    if had_session or log.isEnabledFor(logging.DEBUG):  # -v, or the JVM already runs
        spark = build_session(cfg.spark)
    else:
        console = cfg.out / "logs" / "spark-console.log"
        log.info("Spark console output: %s (-v shows it here)", console)
        with jvm_console_to(console):
            spark = build_session(cfg.spark)
    try:
        yield spark
    finally:
        if not had_session:
            spark.stop()


def stage_prepare(cfg: PipelineConfig) -> dict[str, Any]:
    """Spark: raw logs (or Criteo TSV) -> examples + manifest."""
    with spark_session(cfg) as spark:
        if cfg.source.kind == "criteo":
            from spark_jobs import ingest_criteo

            manifest = ingest_criteo.run(cfg, cfg.source.path, cfg.out, spark=spark)
        else:
            from spark_jobs import build_training_data

            manifest = build_training_data.run(cfg, _paths(cfg)["raw"], cfg.out, spark=spark)
    return {"examples_dir": str(_paths(cfg)["examples"]), "counts": manifest.get("counts")}


def stage_materialize(cfg: PipelineConfig) -> dict[str, Any]:
    """Spark: each user's and item's latest features -> ``<output_dir>/online`` (and Redis
    when ``serving.redis_url`` is set), for the server (skipped for Criteo: no users)."""
    if cfg.source.kind == "criteo":
        return {"skipped": "criteo logs carry no user or item tables"}
    from spark_jobs import materialize_features

    with spark_session(cfg) as spark:
        manifest = materialize_features.run(cfg, spark=spark, redis_url=cfg.serving.redis_url)
    return {"version": manifest["version"], "counts": manifest["counts"]}


def stage_train(cfg: PipelineConfig, resume: bool = True) -> dict[str, Any]:
    """TorchRec training on the examples; checkpoints under ``<output_dir>/checkpoints``.

    With ``resume`` an interrupted run in that directory continues where it stopped;
    without, training starts from scratch and replaces the checkpoints there."""
    p = _paths(cfg)
    if cfg.model.kind == "omni":  # trains and exports in one go (two stages, no checkpoints)
        return {"bundle": str(_train_omni(cfg, p["bundles"]))}
    if cfg.model.kind == "sesa":
        from recsys.concepts.train import train_sesa

        run = train_sesa(cfg, p["examples"], p["checkpoints"])
        return {
            "checkpoint": str(p["checkpoints"] / "best"),
            "best_epoch": run.best_epoch,
            "valid_auc": run.best_auc,
            "epochs": run.metrics,
        }
    from recsys.models.match import load_match_features
    from recsys.training.trainer import train

    match = load_match_features(cfg.model) if cfg.model.kind == "ranker" else []
    result = train(cfg, p["examples"], p["checkpoints"], resume=resume, match_features=match)
    return {
        "checkpoint": str(result.checkpoint),
        "best_epoch": result.best_epoch,
        result.metric_name: result.best_metric,
        "steps": result.steps,
        "stopped_early": result.stopped_early,
        "epochs": result.metrics,
    }


def _train_omni(cfg: PipelineConfig, bundles: Path) -> Path:
    """Train the omni-modal item encoder on the raw items and the train split; export it."""
    from datetime import datetime

    from recsys.omni.config import OmniConfig
    from recsys.omni.pipeline import run_omni

    test_from = cfg.prepare.split.test_from
    before = datetime.fromisoformat(test_from).replace(tzinfo=UTC) if test_from else None
    p = _paths(cfg)
    omni = cfg.omni or OmniConfig()
    return run_omni(
        omni, p["raw"], p["examples"], bundles, items_before_time=before,
        progress=cfg.train.progress,
    )  # fmt: skip


def stage_omni(cfg: PipelineConfig) -> dict[str, Any]:
    """Omni-modal item embeddings into ``<output_dir>/omni_bundles`` when the config has an
    ``omni:`` section (with ``model.kind: omni`` the train stage does it instead)."""
    if cfg.omni is None or cfg.model.kind == "omni":
        return {"skipped": "no omni section" if cfg.omni is None else "model.kind is omni"}
    return {"bundle": str(_train_omni(cfg, cfg.out / "omni_bundles"))}


def stage_export(cfg: PipelineConfig) -> dict[str, Any]:
    """Write the best checkpoint as a versioned bundle under ``<output_dir>/bundles``."""
    from recsys.training.export import export

    if cfg.model.kind == "omni":
        return {"skipped": "the omni train stage exported its bundle"}
    p = _paths(cfg)
    return {"bundle": str(export(cfg, p["checkpoints"], p["bundles"]))}


def stage_index(cfg: PipelineConfig) -> dict[str, Any]:
    """Embed ``<output_dir>/raw/items.parquet`` with the newest bundle and add its two-tier index
    (two-tower models; a ranker has no item vectors to index)."""
    if cfg.model.kind != "two_tower":
        return {"skipped": f"model.kind {cfg.model.kind!r} has no item vectors to index"}
    from recsys.retrieval.build import build_index

    return {"index": str(build_index(cfg))}


def stage_evaluate(
    cfg: PipelineConfig, bundle: str | None = None, compare: str | None = None
) -> dict[str, Any]:
    """Offline metrics and ``report.html`` of a bundle (default: the newest under
    ``<output_dir>/bundles``) on the test split; with ``compare``, also the paired comparison
    against that baseline bundle and its verdict."""
    from recsys.bundle import newest_version
    from recsys.evaluation.evaluate import compare_bundles, console_table, evaluate_bundle

    if cfg.model.kind in ("sesa", "omni") and bundle is None:
        return {"skipped": f"model.kind {cfg.model.kind!r}: see its benchmark (docs/benchmarks.md)"}
    p = _paths(cfg)
    bundle_dir = Path(bundle) if bundle else newest_version(p["bundles"])
    out = cfg.out / "evaluation" / bundle_dir.name
    result = evaluate_bundle(cfg, bundle_dir, p["examples"], out)
    print(console_table(result), file=sys.stderr)
    summary: dict[str, Any] = {
        "bundle": str(bundle_dir),
        "metrics": str(out / "metrics.json"),
        "report": result.get("report"),
        **{
            k: result["overall"][k]
            for k in ("auc", "gauc", "logloss", "ne", "calibration")
            if k in result.get("overall", {})
        },
    }
    if compare:
        verdict = compare_bundles(compare, bundle_dir, p["examples"], out / "compare")
        summary["compare"] = {"baseline": compare, "verdict": verdict["verdict"]}
    return summary


# Answers a pipeline's serve check accepts: a model kind that cannot answer a call (a ranker
# asked for embeddings) or a call whose model family is not built says so; anything else fails.
_SERVE_CHECK_OK = {"OK", "UNIMPLEMENTED", "FAILED_PRECONDITION"}


def stage_serve_check(cfg: PipelineConfig) -> dict[str, Any]:
    """Start the gRPC server on a free loopback port over this pipeline's bundles, make one
    call of each kind, stop it; fail unless every answer is one ``_SERVE_CHECK_OK`` allows and
    at least one call succeeded."""
    from serving.config import ServerConfig
    from serving.smoke import smoke_check

    if cfg.model.kind == "omni":
        return {"skipped": "omni bundles are read by batch jobs and match features, not served"}

    calls = smoke_check(ServerConfig.from_pipeline(cfg))
    codes = {name: c["code"] for name, c in calls.items() if isinstance(c, dict)}
    bad = {name: code for name, code in codes.items() if code not in _SERVE_CHECK_OK}
    if bad or "OK" not in codes.values():
        raise StageError(f"serve check: unexpected answers {bad or codes}")
    return {"calls": calls}


STAGES: dict[str, Callable[..., dict[str, Any]]] = {
    "source": stage_source,
    "prepare": stage_prepare,
    "materialize": stage_materialize,
    "omni": stage_omni,
    "train": stage_train,
    "export": stage_export,
    "evaluate": stage_evaluate,
    "index": stage_index,
    "serve_check": stage_serve_check,
}
PIPELINE = (
    "source",
    "prepare",
    "materialize",
    "omni",
    "train",
    "export",
    "evaluate",
    "index",
    "serve_check",
)


def run_pipeline(
    cfg: PipelineConfig,
    stages: tuple[str, ...] = PIPELINE,
    config_file: str | Path | None = None,
    overrides: dict[str, object] | None = None,
    resume: bool = True,
) -> dict[str, Any]:
    """Run ``stages`` in order, writing ``<output_dir>/pipeline.json``: the config's name, the
    file it was read from (absolute path) and the ``--set`` overrides, then each stage's
    summary in run order.

    ``train`` resumes an interrupted run (``resume``) unless this pipeline has just rebuilt
    the examples (``prepare`` ran before it): checkpoints of other examples cannot resume, so
    running the same pipeline twice into one directory trains from scratch the second time."""
    from recsys.atomic import write_json

    results: dict[str, Any] = {
        "config": cfg.name,
        "config_file": str(Path(config_file).resolve()) if config_file else None,
        "overrides": dict(overrides or {}),
        "stages": {},
    }
    for name in stages:
        t0 = time.perf_counter()
        log.info("== %s ==", name)
        if name == "train":
            fresh = "prepare" in results["stages"]
            if fresh and resume:
                log.info("train: the examples were rebuilt above; training from scratch")
            summary = STAGES[name](cfg, resume=resume and not fresh)
        else:
            summary = STAGES[name](cfg)
        summary["seconds"] = round(time.perf_counter() - t0, 2)
        results["stages"][name] = summary
        log.info("%s done in %.1fs", name, summary["seconds"])
    write_json(cfg.out / "pipeline.json", results, sort_keys=False)  # stages in run order
    return results


def _parse_override(text: str) -> tuple[str, object]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--set {text!r}: expected key.path=value")
    return key, yaml.safe_load(value)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="recsys",
        description="Feature-embedding platform: logs -> examples -> models -> serving.",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("--config", required=True, help="YAML config, e.g. configs/movielens.yaml")
        sp.add_argument(
            "--set",
            dest="overrides",
            action="append",
            type=_parse_override,
            default=[],
            metavar="KEY=VALUE",
            help="override a config key, e.g. --set train.epochs=1",
        )
        return sp

    add("simulate", "simulate the synthetic world into <output_dir>/raw")
    add("source", "load the configured source into <output_dir>/raw and validate it")
    add("prepare", "Spark: raw logs -> training examples + manifest")
    add("materialize", "Spark: latest user/item features -> <output_dir>/online (+ Redis)")
    add("omni", "train and export omni-modal item embeddings (when the config has omni:)")
    add("train", "train the configured model (TorchRec)")
    ev = add("evaluate", "offline metrics and report.html of a bundle on the test split")
    ev.add_argument("--bundle", help="bundle directory (default: the newest under bundles/)")
    ev.add_argument("--compare", metavar="BASELINE_BUNDLE", help="also compare with this bundle")
    add("export", "write a versioned bundle from the best checkpoint")
    add("index", "build the two-tier retrieval index into the newest bundle")
    add("serve", "run the gRPC server (configs/serving.yaml, or a pipeline config)")
    pl = add(
        "pipeline", "run source -> prepare -> train -> export -> evaluate -> index -> serve_check"
    )
    pl.add_argument("--stages", help=f"comma-separated subset of {','.join(PIPELINE)}")
    for sp in (pl, sub.choices["train"]):
        sp.add_argument(
            "--no-resume",
            action="store_true",
            help="train from scratch, replacing <output_dir>/checkpoints (default: resume an "
            "interrupted run there)",
        )
    return p


OUR_PACKAGES = ("recsys", "spark_jobs", "serving")
# Libraries whose warnings and info lines are noise to a user of the CLI (deprecations inside
# TorchRec/FBGEMM, py4j connection chatter); ``-v`` shows them.
CHATTY_LIBRARIES = (
    "torchrec",
    "fbgemm_gpu",
    "torch.distributed",
    "torch.fx",
    "torch.jit",
    "py4j",
)


def quiet_libraries() -> None:
    """Hide the warnings and below-ERROR log lines that ``CHATTY_LIBRARIES`` emit."""
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", module=re.escape(name) + r"(\.|$)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Our own packages log at INFO; every other logger (FBGEMM logs its library loading on the
    # root logger) shows warnings only, unless -v.
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for package in OUR_PACKAGES:
        logging.getLogger(package).setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if not args.verbose:
        quiet_libraries()
    try:
        if args.command == "serve":  # a server YAML is not a pipeline config: serving reads it
            from serving.server import serve

            serve(args.config, dict(args.overrides))
            return 0
        cfg = load_config(args.config, dict(args.overrides))
        if args.command == "pipeline":
            stages = tuple(args.stages.split(",")) if args.stages else PIPELINE
            unknown = [s for s in stages if s not in STAGES]
            if unknown:
                raise StageError(f"--stages: unknown {unknown}; known: {list(STAGES)}")
            out = run_pipeline(
                cfg, stages, args.config, dict(args.overrides), resume=not args.no_resume
            )
        elif args.command == "simulate":
            if cfg.source.kind != "simulator":
                raise StageError(
                    f"{args.config}: source.kind is {cfg.source.kind!r}, not 'simulator'"
                )
            out = stage_source(cfg)
        elif args.command == "evaluate":
            out = stage_evaluate(cfg, args.bundle, args.compare)
        elif args.command == "train":
            out = stage_train(cfg, resume=not args.no_resume)
        else:
            out = STAGES[args.command](cfg)
    except (ConfigError, StageError, FileNotFoundError, ValueError) as e:
        if args.verbose:  # -v: the whole traceback, for bugs rather than bad input
            raise
        print(f"recsys {args.command}: {e}", file=sys.stderr)
        return 2
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one summary, from rank 0
        print(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

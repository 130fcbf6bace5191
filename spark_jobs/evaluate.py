"""Offline evaluation inside Spark, for score tables too big for one machine.

Run::

    spark-submit --py-files dist/recsys.zip spark_jobs/evaluate.py \\
        --bundle runs/simulated/bundles/<version> --examples runs/simulated/examples \\
        --out runs/simulated/evaluation/<version>

The test split is scored inside Spark by the bundle (``mapInPandas``; each executor Python
process loads the bundle once, ``spark_jobs.batch_embed.cached_bundle``) with the very function
the single-machine job uses (``recsys.evaluation.scoring.score_frame``), or a score table
already written (``--scores``) is read. The metrics are the single-machine ones
(``recsys.evaluation.evaluate``), in the same ``metrics.json`` layout, computed without ever
collecting rows to the driver:

- sums (rows, positives, predictions, log loss) per slice: one aggregation;
- exact AUC: positives and negatives per distinct (slice, score), range-partitioned by
  (slice, score); each partition sums its own "negatives below" with a window, and the driver
  adds the negatives of earlier partitions from one small row per (partition, slice). Ties
  count one half, as in scikit-learn;
- GAUC: per (slice, user) AUC in ``applyInPandas`` (one user's rows at a time), then a sum;
- intervals: per-(slice, user) sufficient statistics crossed with ``B`` replicates, each user
  weighted Poisson(1) (hash of seed, replicate and user: reproducible on any cluster), summed
  per (slice, replicate). This is the Poisson bootstrap over users, the standard large-scale
  approximation of drawing users with replacement; it covers log loss, NE, calibration and
  GAUC. AUC has no additive form; its interval is the normal one from the user-clustered
  variance of Obuchowski (1997) (``recsys.evaluation.offline.clustered_auc_variance``),
  computed from each row's placement among the other class;
- LT from logs: user-days, their LT7/LT14 histograms and means, the LT head's MAE and the
  AUC of "active on >= 5 of 7 days".

Slices are the single-machine ones (``recsys.evaluation.summary``): new/returning users and
cold/warm items against the train split, and the most frequent item concepts.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script (spark-submit): make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from pyspark.sql import DataFrame, SparkSession, Window  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

from recsys.evaluation import offline, summary  # noqa: E402
from recsys.evaluation.scoring import bundle_spec, needed_columns, score_frame  # noqa: E402
from spark_jobs.batch_embed import cached_bundle  # noqa: E402
from spark_jobs.session import build_session  # noqa: E402
from spark_jobs.storage import Storage  # noqa: E402

SCORES_SCHEMA = (
    "user_id string, item_id string, label int, score double, ts timestamp, lt7 double, "
    "lt14 double, lt7_pred double, concepts array<string>"
)
USER_SCHEMA = (
    "slice string, user_id string, rows double, positives double, predicted double, "
    "logloss double, auc double"
)
ALL = "all"
REPLICATES = 100
# Poisson(1) inverse CDF: P(K <= k) for k = 0..9 (beyond: 10, probability < 1e-7).
_POISSON_CDF = np.cumsum([math.exp(-1) / math.factorial(k) for k in range(10)])


# ---------------------------------------------------------------------------------------------
# scoring


def score_frames(frames: Iterator[pd.DataFrame], bundle_path: str) -> Iterator[pd.DataFrame]:
    """``mapInPandas`` body: score example rows with the (per-process cached) bundle."""
    bundle = cached_bundle(bundle_path)
    for frame in frames:
        if frame.empty:
            continue
        yield conform(score_frame(bundle, frame))


def conform(scores: pd.DataFrame) -> pd.DataFrame:
    """A score table with every column of ``SCORES_SCHEMA`` (absent ones null)."""
    out = pd.DataFrame(
        {
            "user_id": scores["user_id"].astype(str),
            "item_id": scores["item_id"].astype(str),
            "label": scores["label"].astype(np.int32),
            "score": scores["score"].astype(np.float64),
        }
    )
    out["ts"] = scores["ts"] if "ts" in scores else pd.NaT
    for c in ("lt7", "lt14", "lt7_pred"):
        out[c] = scores[c].astype(np.float64) if c in scores else np.nan
    out["concepts"] = (
        scores["concepts"].map(lambda c: None if c is None else [str(v) for v in c])
        if "concepts" in scores
        else None
    )
    return out


def score_examples(spark: SparkSession, bundle_path: str, examples_dir: str) -> DataFrame:
    """The test split scored by the bundle, as a Spark DataFrame of ``SCORES_SCHEMA``."""
    bundle = cached_bundle(bundle_path)  # fail fast on the driver for a broken bundle
    kind = str(bundle.meta["model"]["kind"])
    if kind != "ranker":
        raise ValueError(
            f"{bundle_path}: a {kind!r} bundle does not score rows; the Spark job evaluates "
            "rankers (two-tower retrieval: recsys evaluate on one machine)"
        )
    df = spark.read.parquet(f"{examples_dir.rstrip('/')}/split=test")
    df = df.select(*needed_columns(bundle_spec(bundle), df.columns))

    def body(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        yield from score_frames(frames, bundle_path)

    return df.mapInPandas(body, SCORES_SCHEMA)


# ---------------------------------------------------------------------------------------------
# slices


def with_slices(
    scores: DataFrame,
    train: DataFrame,
    *,
    cold_item_rows: int = summary.COLD_ITEM_ROWS,
    top_concepts: int = summary.TOP_CONCEPTS,
) -> DataFrame:
    """``scores`` with a ``slice`` column, each row repeated once per slice it belongs to."""
    train_users = train.select("user_id").distinct().withColumn("_seen", F.lit(True))
    train_items = train.groupBy("item_id").agg(F.count("*").alias("_item_rows"))
    rows = scores.join(F.broadcast(train_users), "user_id", "left").join(
        train_items, "item_id", "left"
    )
    user = F.when(F.col("_seen").isNotNull(), "user=returning").otherwise("user=new")
    item = F.when(F.coalesce("_item_rows", F.lit(0)) < cold_item_rows, "item=cold").otherwise(
        "item=warm"
    )
    parts = [F.array(F.lit(ALL), user, item)]
    if "concepts" in scores.columns:
        concepts = F.coalesce(F.array_distinct("concepts"), F.array().cast("array<string>"))
        top = [
            r["c"]
            for r in scores.select(F.explode(concepts).alias("c"))
            .groupBy("c")
            .count()
            .orderBy(F.desc("count"), "c")
            .limit(top_concepts)
            .collect()
        ]
        if top:
            tops = F.array(*[F.lit(c) for c in top])
            chosen = F.filter(concepts, lambda c: F.array_contains(tops, c))
            parts.append(F.transform(chosen, lambda c: F.concat(F.lit("concept="), c)))
    labelled = rows.withColumn("slice", F.explode(F.concat(*parts)))
    return labelled.drop("_seen", "_item_rows")


# ---------------------------------------------------------------------------------------------
# metrics


def exact_auc(df: DataFrame, key: str, label: str, score: str, partitions: int) -> dict[str, float]:
    """Exact AUC per value of ``key`` (ties count one half), without collecting rows."""
    return _AucTable(df, key, label, score, partitions).aucs


class _AucTable:
    """Positives and negatives per distinct (key, score), range-partitioned, with the counts
    below each score inside its partition (a window) and, on the driver, the totals of the
    earlier partitions of each key (one small row per partition and key)."""

    def __init__(self, df: DataFrame, key: str, label: str, score: str, partitions: int) -> None:
        self.key, self.label, self.score = key, label, score
        counts = df.groupBy(key, score).agg(
            F.sum(F.col(label).cast("double")).alias("pos"),
            F.sum(1.0 - F.col(label).cast("double")).alias("neg"),
        )
        ranged = (
            counts.repartitionByRange(partitions, key, score)
            .withColumn("pid", F.spark_partition_id())
            .localCheckpoint(eager=True)  # partition ids fixed before they are read twice
        )
        before = (
            Window.partitionBy("pid", key).orderBy(score).rowsBetween(Window.unboundedPreceding, -1)
        )
        self.local = ranged.withColumn(
            "neg_below", F.coalesce(F.sum("neg").over(before), F.lit(0.0))
        ).withColumn("pos_below", F.coalesce(F.sum("pos").over(before), F.lit(0.0)))
        parts = (
            self.local.groupBy("pid", key)
            .agg(
                F.sum("pos").alias("pos"),
                F.sum("neg").alias("neg"),
                F.sum(F.col("pos") * (F.col("neg_below") + 0.5 * F.col("neg"))).alias("wins"),
            )
            .collect()
        )
        self.aucs: dict[str, float] = {}
        self.totals: dict[str, tuple[float, float]] = {}
        self.offsets: list[tuple[int, str, float, float]] = []  # pid, key, neg/pos before
        for k in {p[key] for p in parts}:
            mine = sorted((p for p in parts if p[key] == k), key=lambda p: p["pid"])
            wins, neg_before, pos_before = 0.0, 0.0, 0.0
            for p in mine:
                self.offsets.append((p["pid"], k, neg_before, pos_before))
                wins += p["wins"] + p["pos"] * neg_before
                neg_before += p["neg"]
                pos_before += p["pos"]
            self.totals[k] = (pos_before, neg_before)
            ok = pos_before and neg_before
            self.aucs[k] = wins / (pos_before * neg_before) if ok else float("nan")

    def clustered_variance(self, rows: DataFrame, cluster: str) -> dict[str, float]:
        """Per key, the AUC's variance with rows clustered by ``cluster`` (the formula of
        ``recsys.evaluation.offline.clustered_auc_variance``), from per-row placements."""
        spark = rows.sparkSession
        key, score = self.key, self.score
        offsets = spark.createDataFrame(
            self.offsets, f"pid int, {key} string, neg_before double, pos_before double"
        )
        totals = spark.createDataFrame(
            [(k, m, n, self.aucs[k]) for k, (m, n) in self.totals.items()],
            f"{key} string, m_all double, n_all double, a double",
        )
        placed = (
            self.local.join(F.broadcast(offsets), ["pid", key])
            .join(F.broadcast(totals), key)
            .select(
                key,
                score,
                (
                    (F.col("neg_below") + F.col("neg_before") + 0.5 * F.col("neg")) / F.col("n_all")
                ).alias("v10"),
                (
                    (
                        F.col("m_all")
                        - F.col("pos_below")
                        - F.col("pos_before")
                        - F.col("pos")
                        + 0.5 * F.col("pos")
                    )
                    / F.col("m_all")
                ).alias("v01"),
            )
        )
        y = F.col(self.label).cast("double")
        per_cluster = (
            rows.select(key, cluster, score, self.label)
            .join(placed, [key, score])
            .groupBy(key, cluster)
            .agg(
                F.sum(F.col("v10") * y).alias("v10"),
                F.sum(F.col("v01") * (1 - y)).alias("v01"),
                F.sum(y).alias("m"),
                F.sum(1 - y).alias("n"),
            )
            .join(F.broadcast(totals), key)
            .withColumn("d10", F.col("v10") - F.col("m") * F.col("a"))
            .withColumn("d01", F.col("v01") - F.col("n") * F.col("a"))
        )
        sums = per_cluster.groupBy(key).agg(
            F.count("*").alias("k"),
            F.sum(F.col("d10") ** 2).alias("s10"),
            F.sum(F.col("d01") ** 2).alias("s01"),
            F.sum(F.col("d10") * F.col("d01")).alias("s11"),
        )
        out: dict[str, float] = {}
        for r in sums.collect():
            m_all, n_all = self.totals[r[key]]
            k = r["k"]
            if k < 2 or not m_all or not n_all:
                out[r[key]] = float("nan")
                continue
            scale = k / (k - 1)
            out[r[key]] = (
                scale * r["s10"] / m_all / m_all
                + scale * r["s01"] / n_all / n_all
                + 2 * scale * r["s11"] / (m_all * n_all)
            )
        return out


def per_user_stats(df: DataFrame) -> DataFrame:
    """Per (slice, user): rows, positives, Σ predictions, Σ log loss and the user's AUC."""

    def stats(frame: pd.DataFrame) -> pd.DataFrame:
        y = frame["label"].to_numpy(np.float64)
        p = frame["score"].to_numpy(np.float64)
        codes = np.zeros(len(frame), dtype=np.int64)
        s = offline.UserSums.of(codes, y, p, 1)
        return pd.DataFrame(
            {
                "slice": [frame["slice"].iloc[0]],
                "user_id": [frame["user_id"].iloc[0]],
                "rows": s.rows,
                "positives": s.positives,
                "predicted": s.predicted,
                "logloss": s.logloss,
                "auc": s.auc,
            }
        )

    return (
        df.select("slice", "user_id", "label", "score")
        .groupBy("slice", "user_id")
        .applyInPandas(stats, USER_SCHEMA)
    )


def _poisson(u: F.Column) -> F.Column:
    """Poisson(1) draw from a uniform column by the inverse CDF."""
    k = F.lit(len(_POISSON_CDF))
    for i in reversed(range(len(_POISSON_CDF))):
        k = F.when(u < float(_POISSON_CDF[i]), i).otherwise(k)
    return k.cast("double")


def bootstrap_sums(users: DataFrame, replicates: int, seed: int) -> pd.DataFrame:
    """Per (slice, replicate): Poisson-weighted sums of the per-user statistics (small)."""
    spark = users.sparkSession
    reps = spark.range(replicates).withColumnRenamed("id", "replicate")
    h = F.xxhash64(F.lit(seed), "replicate", "user_id")
    u = (F.abs(h) % (1 << 52)) / float(1 << 52)
    weighted = users.crossJoin(F.broadcast(reps)).withColumn("w", _poisson(u))
    valid = F.col("auc").isNotNull() & ~F.isnan("auc")
    return (
        weighted.groupBy("slice", "replicate")
        .agg(
            F.sum(F.col("w") * F.col("rows")).alias("rows"),
            F.sum(F.col("w") * F.col("positives")).alias("positives"),
            F.sum(F.col("w") * F.col("predicted")).alias("predicted"),
            F.sum(F.col("w") * F.col("logloss")).alias("logloss"),
            F.sum(F.when(valid, F.col("w") * F.col("rows") * F.col("auc"))).alias("gauc_num"),
            F.sum(F.when(valid, F.col("w") * F.col("rows"))).alias("gauc_den"),
        )
        .toPandas()
    )


def _metrics_of_sums(s: pd.DataFrame | pd.Series) -> dict[str, Any]:
    with np.errstate(invalid="ignore", divide="ignore"):
        rows = np.asarray(s["rows"], dtype=np.float64)
        pos = np.asarray(s["positives"], dtype=np.float64)
        ll = np.asarray(s["logloss"], dtype=np.float64) / rows
        rate = pos / rows
        ent = -(rate * np.log(rate) + (1 - rate) * np.log(1 - rate))
        return {
            "logloss": ll,
            "ne": ll / ent,
            "calibration": np.asarray(s["predicted"], dtype=np.float64) / pos,
            "gauc": np.asarray(s["gauc_num"], dtype=np.float64)
            / np.asarray(s["gauc_den"], dtype=np.float64),
        }


def binary_by_slice(
    sliced: DataFrame, replicates: int, seed: int, partitions: int, level: float
) -> dict[str, dict[str, Any]]:
    """Every binary metric per slice, with Poisson-bootstrap intervals where additive."""
    users = per_user_stats(sliced).localCheckpoint(eager=True)
    valid = F.col("auc").isNotNull() & ~F.isnan("auc")
    totals = (
        users.groupBy("slice")
        .agg(
            F.sum("rows").alias("rows"),
            F.sum("positives").alias("positives"),
            F.sum("predicted").alias("predicted"),
            F.sum("logloss").alias("logloss"),
            F.sum(F.when(valid, F.col("rows") * F.col("auc"))).alias("gauc_num"),
            F.sum(F.when(valid, F.col("rows"))).alias("gauc_den"),
            F.count("*").alias("users"),
        )
        .toPandas()
        .set_index("slice")
    )
    auc_table = _AucTable(sliced, "slice", "label", "score", partitions)
    aucs = auc_table.aucs
    auc_variance = auc_table.clustered_variance(sliced, "user_id") if replicates else {}
    boot = bootstrap_sums(users, replicates, seed) if replicates else pd.DataFrame()
    out: dict[str, dict[str, Any]] = {}
    for name, row in totals.iterrows():
        point = {k: float(v) for k, v in _metrics_of_sums(row).items()}
        m: dict[str, Any] = {
            "auc": aucs.get(str(name), float("nan")),
            "gauc": point["gauc"],
            "logloss": point["logloss"],
            "ne": point["ne"],
            "calibration": point["calibration"],
            "rows": float(row["rows"]),
            "users": float(row["users"]),
            "base_rate": float(row["positives"] / row["rows"]),
            "auc_ci": offline.normal_interval(
                aucs.get(str(name), float("nan")),
                auc_variance.get(str(name), float("nan")),
                level,
            )
            if replicates
            else None,
        }
        if not boot.empty:
            reps = _metrics_of_sums(boot[boot["slice"] == name])
            for k, v in reps.items():
                m[f"{k}_ci"] = offline.interval(v, level)
        out[str(name)] = m
    return out


def lt_metrics(scores: DataFrame, partitions: int, last_day: Any = None) -> dict[str, Any]:
    """LT7/LT14 over user-days whose window ends inside the logs (``last_day``, the last UTC
    day of the examples; see ``recsys.evaluation.summary.complete_windows``), the LT head's
    MAE and the AUC of "active on >= 5 of 7 days"."""
    known_lt = F.col("lt7").isNotNull() & ~F.isnan("lt7")
    if scores.filter(known_lt).limit(1).count() == 0:
        return {"available": False, "reason": "the examples carry no lt7"}
    days = (
        scores.filter(known_lt)
        .withColumn("day", F.date_trunc("day", F.col("ts")))
        .groupBy("user_id", "day")
        .agg(
            F.first("lt7").alias("lt7"),
            F.first("lt14").alias("lt14"),
            F.avg("lt7_pred").alias("lt7_pred"),
        )
        .localCheckpoint(eager=True)
    )
    total = days.count()

    def complete(width: int) -> DataFrame:
        if last_day is None:
            return days
        end = F.lit(last_day) - F.expr(f"INTERVAL {width - 1} DAYS")
        return days.filter(F.col("day") <= end)

    out: dict[str, Any] = {
        "available": True,
        "last_day": None if last_day is None else str(last_day),
    }
    for col, width in (("lt7", 7), ("lt14", 14)):
        known = complete(width).filter(F.col(col).isNotNull() & ~F.isnan(col))
        counts = {int(r[col]): int(r["count"]) for r in known.groupBy(col).count().collect()}
        n = sum(counts.values())
        entry: dict[str, Any] = {"user_days": n, "censored_user_days": total - n}
        if counts:
            entry |= {
                "mean": float(known.agg(F.avg(col)).first()[0]),
                "mean_ci": None,
                "histogram": {str(d): counts.get(d, 0) for d in range(1, width + 1)},
            }
        out[col] = entry
    head = complete(7).filter(F.col("lt7_pred").isNotNull() & ~F.isnan("lt7_pred"))
    n_head = head.count()
    if n_head == 0 and days.filter(F.col("lt7_pred").isNotNull()).limit(1).count() == 0:
        out["head"] = {"available": False, "reason": "the bundle has no LT head"}
        return out
    if n_head < 3:
        out["head"] = {
            "available": False,
            "reason": "fewer than 3 user-days with a complete 7-day window in this split",
        }
        return out
    head = head.withColumn("active", (F.col("lt7") >= summary.ACTIVE_DAYS).cast("int"))
    head = head.withColumn("one", F.lit("lt"))
    row = head.agg(F.avg(F.abs(F.col("lt7_pred") - F.col("lt7"))), F.avg("active")).first()
    out["head"] = {
        "available": True,
        "user_days": n_head,
        "lt7_mae": float(row[0]),
        "active5_auc": exact_auc(head, "one", "active", "lt7_pred", partitions).get(
            "lt", float("nan")
        ),
        "active5_base_rate": float(row[1]),
    }
    return out


def reliability(scores: DataFrame, bins: int = 10) -> dict[str, list[float]]:
    """The reliability diagram's points (equal-width bins), as the single-machine job."""
    b = F.least(F.floor(F.col("score") * bins).cast("int"), F.lit(bins - 1)).alias("b")
    rows = (
        scores.groupBy(b)
        .agg(F.count("*").alias("n"), F.avg("score").alias("p"), F.avg("label").alias("y"))
        .orderBy("b")
        .collect()
    )
    return {
        "predicted": [float(r["p"]) for r in rows],
        "observed": [float(r["y"]) for r in rows],
        "rows": [float(r["n"]) for r in rows],
    }


def metrics_of_scores(
    scores: DataFrame,
    train: DataFrame,
    *,
    last_day: Any = None,
    replicates: int = REPLICATES,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """``metrics.json``'s ``overall``, ``slices``, ``lt`` and ``curves`` from a score table."""
    scores = scores.localCheckpoint(eager=True)
    partitions = max(2, int(scores.sparkSession.conf.get("spark.sql.shuffle.partitions")))
    sliced = with_slices(scores, train).localCheckpoint(eager=True)
    by_slice = binary_by_slice(sliced, replicates, seed, partitions, level)
    overall = by_slice.pop(ALL)
    return {
        "overall": overall,
        "slices": by_slice,
        "lt": lt_metrics(scores, partitions, last_day),
        "curves": {"reliability": reliability(scores)},
        "bootstrap": {
            "unit": "user",
            "method": "poisson",
            "auc_ci": "normal, user-clustered variance (Obuchowski 1997)",
            "replicates": replicates,
            "seed": seed,
            "level": level,
        },
    }


def run(
    bundle_path: str | Path,
    examples_dir: str | Path,
    out_dir: str | Path,
    *,
    spark: SparkSession | None = None,
    scores_path: str | None = None,
    replicates: int = REPLICATES,
    seed: int = 0,
    report: bool = True,
    write_scores: bool = False,
) -> dict[str, Any]:
    """Score the test split (or read ``scores_path``), compute the metrics, write
    ``out_dir/metrics.json`` (and ``report.html`` when ``out_dir`` is local; the score table
    as Parquet ``out_dir/scores`` with ``write_scores``)."""
    spark = spark or build_session()
    examples = str(examples_dir).rstrip("/")
    bundle_path = (
        str(Path(bundle_path).resolve()) if "://" not in str(bundle_path) else str(bundle_path)
    )
    if scores_path:
        scores = spark.read.parquet(scores_path)
    else:
        scores = score_examples(spark, bundle_path, examples)
    storage = Storage(spark)
    out = str(out_dir).rstrip("/")
    if write_scores:
        scores.write.mode("overwrite").parquet(f"{out}/scores")
        scores = spark.read.parquet(f"{out}/scores")
    train = spark.read.parquet(f"{examples}/split=train").select("user_id", "item_id")
    splits = [
        p
        for p in Storage(spark).list(examples)
        if p.rstrip("/").split("/")[-1].startswith("split=")
    ]
    last_ts = spark.read.parquet(*splits).agg(F.max("ts")).first()[0]
    last_day = None if last_ts is None else pd.Timestamp(last_ts).tz_localize(None).floor("D")
    bundle = cached_bundle(bundle_path)
    result: dict[str, Any] = {
        "bundle": bundle_path,
        "version": bundle.version,
        "kind": str(bundle.meta["model"]["kind"]),
        "examples_dir": examples,
        "split": "test",
        "engine": "spark",
        **metrics_of_scores(scores, train, last_day=last_day, replicates=replicates, seed=seed),
    }
    if report and storage.is_local(out):
        from recsys.evaluation.report import write_report

        result["report"] = str(write_report(result, storage.local_path(out)))
    storage.write_json(f"{out}/metrics.json", result)
    return result


def main(argv: list[str] | None = None) -> int:
    """CLI: ``--bundle DIR --examples DIR --out DIR [--scores PARQUET] [--replicates N]``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", required=True, help="bundle/<version> directory (a ranker)")
    p.add_argument("--examples", required=True, help="examples directory (split=test inside)")
    p.add_argument("--out", required=True, help="output directory for metrics.json")
    p.add_argument("--scores", help="an existing score table (Parquet) instead of scoring")
    p.add_argument("--replicates", type=int, default=REPLICATES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--write-scores", action="store_true", help="also write <out>/scores")
    p.add_argument("--config", help="pipeline YAML whose spark section builds the session")
    args = p.parse_args(argv)
    spark = None
    if args.config:
        from recsys.config import load_config

        spark = build_session(load_config(args.config).spark)
    try:
        result = run(
            args.bundle,
            args.examples,
            args.out,
            spark=spark,
            scores_path=args.scores,
            replicates=args.replicates,
            seed=args.seed,
            write_scores=args.write_scores,
        )
    except (ValueError, FileNotFoundError) as e:
        print(f"evaluate: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result["overall"], indent=2, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    # Re-import through the package so mapInPandas pickles `score_frames` by reference and the
    # per-process bundle cache lives in the importable module, not in a pickled __main__.
    from spark_jobs.evaluate import main as _main

    sys.exit(_main())

"""spark_jobs/ingest_criteo.py on small Criteo-format TSV day files, with real Spark."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest

from recsys.config import parse_config
from recsys.contract import EXAMPLES, validate_table
from spark_jobs import ingest_criteo as job

pytestmark = [pytest.mark.spark, pytest.mark.slow]

BAD_LINES = {
    "wrong_field_count": "1\t2\t3",
    "bad_label": "\t".join(["x"] + ["1"] * 13 + ["a"] * 26),
    "bad_int": "\t".join(["0", "12z"] + ["1"] * 12 + ["a"] * 26),
}


def good_line(rng: np.random.Generator, label: int) -> tuple[str, list[int | None], list[str]]:
    ints = [int(rng.integers(-3, 1000)) if rng.random() < 0.8 else None for _ in range(13)]
    cats = [f"{int(rng.integers(0, 40)):08x}" if rng.random() < 0.85 else "" for _ in range(26)]
    fields = [str(label)] + ["" if x is None else str(x) for x in ints] + cats
    return "\t".join(fields), ints, cats


def write_days(root: Path, days: int, lines_per_day: int = 40, with_bad: bool = True) -> list:
    """Day files day_0..; returns [(file, line_no, label, ints, cats)] of the good lines."""
    rng = np.random.default_rng(11)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for d in range(days):
        name = f"day_{d}.tsv"
        with open(root / name, "w") as f:
            for k in range(lines_per_day):
                label = int(rng.random() < 0.3)
                line, ints, cats = good_line(rng, label)
                f.write(line + "\n")
                rows.append((name, k, label, ints, cats))
            if with_bad:
                for bad in BAD_LINES.values():
                    f.write(bad + "\n")
    return rows


def read_examples(out: Path) -> pd.DataFrame:
    t = ds.dataset(
        out / "examples", format="parquet", partitioning="hive", exclude_invalid_files=True
    ).to_table()
    t = t.set_column(t.schema.get_field_index("split"), "split", t["split"].cast(pa.string()))
    return t


def config(**prepare: object):  # noqa: ANN201
    return parse_config(
        {
            "name": "criteo",
            "source": {"kind": "criteo", "path": "x"},
            "prepare": {"max_bad_fraction": 0.1, **prepare},
        }
    )


@pytest.fixture(scope="module")
def three_days(spark, tmp_path_factory):  # noqa: ANN001, ANN201
    root = tmp_path_factory.mktemp("criteo3")
    rows = write_days(root / "raw", days=3)
    manifest = job.run(config(), root / "raw", root / "out", spark)
    return root, rows, manifest, read_examples(root / "out")


def test_last_day_is_test_the_one_before_valid_the_rest_train(three_days) -> None:  # noqa: ANN001
    _, rows, manifest, table = three_days
    assert manifest["split"]["files"] == {
        "day_0.tsv": "train",
        "day_1.tsv": "valid",
        "day_2.tsv": "test",
    }
    c = manifest["counts"]
    assert (c["train"], c["valid"], c["test"]) == (40, 40, 40)
    assert c["positives"] == sum(r[2] for r in rows)


def test_malformed_lines_are_quarantined_with_reasons(three_days) -> None:  # noqa: ANN001
    root, _, manifest, _ = three_days
    assert manifest["counts"]["quarantined"] == {r: 3 for r in BAD_LINES}
    q = pd.read_parquet(root / "out" / "quarantine" / "criteo")
    assert set(zip(q.reason, q.line, strict=True)) == {(r, line) for r, line in BAD_LINES.items()}
    assert set(q.file) == {"day_0.tsv", "day_1.tsv", "day_2.tsv"}
    # The quarantine is published in the same release as the examples it belongs to.
    examples = (root / "out" / "examples").resolve()
    assert (root / "out" / "quarantine").resolve().parent == examples.parent
    assert examples.parent.parent.name == "releases"


def test_integers_become_log1p_of_clipped_values_and_categories_lists(three_days) -> None:  # noqa: ANN001
    _, rows, manifest, table = three_days
    df = table.to_pandas()
    # Identify lines by their 26 categorical values + label (unique with this seed).
    key = lambda cats, label: (label, tuple(cats))  # noqa: E731
    got = {
        key(["".join(c) for c in r[1:]], r[0]): r
        for r in zip(df.label, *[df[f"s_cat_{i}"] for i in range(1, 27)], strict=True)
    }
    assert len(got) == len(rows)
    for _name, _k, label, ints, cats in rows[:30]:
        match = df[
            (df.label == label)
            & np.array(
                [
                    all(list(v) == ([c] if c else []) for v, c in zip(r, cats, strict=True))
                    for r in zip(*[df[f"s_cat_{i}"] for i in range(1, 27)], strict=True)
                ]
            )
        ]
        assert len(match) == 1
        row = match.iloc[0]
        for i, x in enumerate(ints, start=1):
            want = math.log1p(max(x or 0, 0))
            assert row[f"d_int_{i}"] == pytest.approx(want, rel=1e-6)
    assert table.schema.field("d_int_1").type == pa.float32()
    assert manifest["features"]["sparse"] == [f"s_cat_{i}" for i in range(1, 27)]
    assert manifest["features"]["stats"]["s_cat_1"]["distinct"] <= 40


def test_criteo_examples_follow_the_contract(three_days) -> None:  # noqa: ANN001
    _, _, manifest, table = three_days
    report = validate_table(table, EXAMPLES, sparse=manifest["features"]["sparse"])
    assert report.ok, str(report)
    assert table["user_id"].null_count == table.num_rows
    assert table["ts"].null_count == table.num_rows


def test_one_file_is_split_by_line_position(spark, tmp_path) -> None:  # noqa: ANN001
    write_days(tmp_path / "raw", days=1, lines_per_day=200, with_bad=False)
    manifest = job.run(
        config(split={"valid_fraction": 0.1, "test_fraction": 0.2}),
        tmp_path / "raw" / "day_0.tsv",
        tmp_path / "out",
        spark,
    )
    c = manifest["counts"]
    assert (c["train"], c["valid"], c["test"]) == pytest.approx((140, 20, 40), abs=2)
    assert manifest["split"]["by"] == "position"
    # Order is kept: the first lines are train, the last ones test.
    lines = (tmp_path / "raw" / "day_0.tsv").read_text().splitlines()
    first, last = lines[0].split("\t"), lines[-1].split("\t")
    df = read_examples(tmp_path / "out").to_pandas()

    def split_of(fields: list[str]) -> str:
        cats = fields[14:]
        mask = np.ones(len(df), bool)
        for i, c in enumerate(cats, start=1):
            mask &= df[f"s_cat_{i}"].map(lambda v, c=c: list(v) == ([c] if c else [])).to_numpy()
        return df[mask].split.item()

    assert split_of(first) == "train" and split_of(last) == "test"


def test_too_many_malformed_lines_fail_before_publishing(spark, tmp_path) -> None:  # noqa: ANN001
    write_days(tmp_path / "raw", days=1, lines_per_day=10)
    with pytest.raises(job.DataQualityError, match=r"criteo: 23\.1% of rows quarantined"):
        job.run(config(), tmp_path / "raw", tmp_path / "out", spark)
    assert not (tmp_path / "out" / "examples").exists()


def test_criteo_feature_statistics_come_from_the_train_split_only(three_days) -> None:  # noqa: ANN001
    _, _, manifest, table = three_days
    train = table.filter(pc.equal(table["split"], "train"))
    distinct_train = len(pc.unique(pc.list_flatten(train["s_cat_1"])))
    assert manifest["features"]["stats_split"] == "train"
    assert manifest["features"]["stats"]["s_cat_1"]["distinct"] == distinct_train
    train_max = pc.max(train["d_int_1"]).as_py()
    assert manifest["features"]["dense_stats"]["d_int_1"]["max"] == pytest.approx(train_max)

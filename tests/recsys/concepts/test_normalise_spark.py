"""One concept-name rule: the Spark prepare job's ``concept_counts`` and the library's
``normalise_concept`` / ``ConceptVocabulary`` give the same names, display names and counts,
on odd strings (non-ASCII, NBSP and other Unicode spaces, tabs, full-width letters, 'ß', 'İ',
final sigma, mixed case)."""

from __future__ import annotations

import pandas as pd
import pytest

from recsys.concepts.vocabulary import ConceptVocabulary, normalise_concept

# One item per string, so every string is counted once and its name can be read back.
ODD_NAMES = [
    "Jazz",
    "  jazz\t",
    "Film\u00a0\u00a0Noir",  # NBSP run
    "film\tnoir",
    "Science \u3000 Fiction",  # ideographic space
    "science\u2003fiction\u202f",  # em space inside, narrow NBSP at the end
    "ＪＡＺＺ",  # full-width letters: lower-cased, not folded to ASCII
    "Straße",
    "STRASSE",
    "İstanbul",
    "ΟΔΟΣ",  # final sigma
    "Ñandú Café",
    "東京  Tower",
    "\u00a0Line\u2028Break\u0085",
    "unit\x1fseparator",  # not white space to Java (nor to this rule)
    "zero\u200bwidth",  # not white space either
    "MiXeD CaSe",
    "\ttab lead",
]


def _spark_vocabulary(spark, lists: list[list[str] | None]) -> dict:  # noqa: ANN001
    job = pytest.importorskip("spark_jobs.build_training_data")
    items = spark.createDataFrame(
        pd.DataFrame({"_id": [str(n) for n in range(len(lists))], "concepts": lists})
    )
    return job._concepts(job.concept_counts(items).collect(), min_count=1)


def test_spark_concept_counts_and_normalise_concept_name_odd_strings_alike(spark) -> None:  # noqa: ANN001
    spark_vocab = _spark_vocabulary(spark, [[name] for name in ODD_NAMES])
    spark_names = {entry["name"] for entry in spark_vocab["items"]}
    assert spark_names == {normalise_concept(name) for name in ODD_NAMES}
    # the rule itself: Unicode space runs collapsed, stripped, lower-cased; nothing folded
    by_name = {entry["name"]: entry for entry in spark_vocab["items"]}
    assert by_name["jazz"]["count"] == 2
    assert by_name["film noir"]["count"] == 2
    assert by_name["science fiction"]["count"] == 2
    assert by_name["ｊａｚｚ"]["count"] == 1
    assert {"straße", "strasse", "line break", "ñandú café", "東京 tower"} <= spark_names
    assert normalise_concept("İstanbul") in spark_names and normalise_concept("ΟΔΟΣ") == "οδος"
    assert "unit\x1fseparator" in spark_names and "zero\u200bwidth" in spark_names


def test_python_vocabulary_equals_the_spark_jobs_on_odd_strings(spark) -> None:  # noqa: ANN001
    lists: list[list[str] | None] = [[name] for name in ODD_NAMES]
    # several concepts per item, spellings of one concept twice on one item, empties
    lists += [
        ["Jazz", "JAZZ", "jazz ", "Straße"],
        ["Film Noir", "film\u00a0noir", ""],
        ["JAZZ", "ＪＡＺＺ"],
        None,
        [],
    ]
    expected = _spark_vocabulary(spark, lists)
    assert ConceptVocabulary.from_concept_lists(lists, min_count=1).to_dict() == expected
    # items 0, 1, 18, 20; spellings Jazz x2, JAZZ x2, "jazz\t", "jazz": ties to the smallest
    assert expected["items"][0] == {"id": 0, "name": "jazz", "display": "JAZZ", "count": 4}

"""Concept vocabulary: normalisation, minimum count, id order, manifest preferred."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from recsys.concepts.vocabulary import ConceptVocabulary, load_vocabulary, normalise_concept


def test_case_and_whitespace_variants_are_one_concept() -> None:
    assert normalise_concept("  Genre:Sci-Fi \t Films ") == "genre:sci-fi films"
    vocab = ConceptVocabulary.from_concept_lists([["Jazz"], [" jazz  "], ["JAZZ", "jazz"]])
    assert vocab.names == ("jazz",) and vocab.counts == (3,)
    assert vocab.display == ("JAZZ",) or vocab.display[0] in ("Jazz", "jazz", "JAZZ")


def test_concepts_below_min_count_are_left_out_and_ids_follow_count_then_name() -> None:
    lists = [["b", "a"], ["a", "c"], ["b", "a"], ["d"], [None, ""]]
    vocab = ConceptVocabulary.from_concept_lists(lists, min_count=2)
    assert vocab.names == ("a", "b")
    assert vocab.counts == (3, 2)
    assert vocab.id_of(" A ") == 0 and vocab.id_of("c") is None
    assert vocab.ids_of(["b", "zzz", "B", "a"]) == [1, 0]


def test_dict_round_trip_and_bad_ids_are_named() -> None:
    vocab = ConceptVocabulary.from_concept_lists([["x", "y"], ["x"]])
    assert ConceptVocabulary.from_dict(vocab.to_dict()) == vocab
    broken = vocab.to_dict()
    broken["items"][1]["id"] = 5
    with pytest.raises(ValueError, match="manifest.json: concepts"):
        ConceptVocabulary.from_dict(broken, origin="manifest.json: concepts")


def test_the_manifest_vocabulary_wins_over_the_items_table(tmp_path: Path) -> None:
    items = pa.table({"item_id": ["1", "2"], "concepts": [["a", "b"], ["a"]]})
    assert load_vocabulary(tmp_path, items, 1).names == ("a", "b")
    manifest = {"concepts": {"min_count": 2, "items": [{"id": 0, "name": "Z", "count": 7}]}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    vocab = load_vocabulary(tmp_path, items, 1)
    assert vocab.names == ("z",) and vocab.counts == (7,) and vocab.min_count == 2

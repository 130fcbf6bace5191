"""ConceptSpace from a trained SESA model: scores, exact explanations, cold items, the match
feature contract, the bundle round trip, and the ESA / latent baselines behind one interface."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from recsys.bundle import BundleError, load_bundle
from recsys.concepts.checkpoint import export_space_bundle, load_space
from recsys.concepts.data import read_examples
from recsys.concepts.esa import build_esa
from recsys.concepts.metrics import auc, concept_precision
from recsys.concepts.vocabulary import normalise_concept
from recsys.models.match import MatchFeature, match_matrix

from .conftest import concept_config


def _test_rows(concept_world: Path):  # noqa: ANN202
    return read_examples(concept_world, "test")


def test_sesa_learns_the_concept_match_of_the_world(trained_sesa, concept_world: Path) -> None:
    rows = _test_rows(concept_world)
    scores = trained_sesa.space.score_numpy(rows.user_ids, rows.histories, rows.item_ids)
    assert auc(rows.labels, scores) > 0.75


def test_item_vectors_are_top_k_sparse_non_negative_named_concepts(trained_sesa) -> None:
    space = trained_sesa.space
    assert space.explicit and space.dim == len(space.vocabulary)
    assert (space.item_vectors >= 0).all()
    assert ((space.item_vectors > 0).sum(1) <= 3).all()
    assert ((space.item_vectors > 0).sum(1) >= 1).mean() > 0.9


def test_explanation_contributions_plus_biases_equal_the_score(
    trained_sesa, concept_world: Path
) -> None:
    space = trained_sesa.space
    rows = _test_rows(concept_world)
    scores = space.score_numpy(rows.user_ids, rows.histories, rows.item_ids)
    for n in range(0, len(rows), 17):
        e = space.explain(rows.user_ids[n], rows.item_ids[n], history=rows.histories[n])
        parts = [c.contribution for c in e.concepts] + list(e.biases.values())
        assert math.fsum(parts) == e.score
        assert e.score == pytest.approx(scores[n], abs=1e-9)
        assert all(c.contribution != 0 or c.item_value != 0 for c in e.concepts)
        assert [c.contribution for c in e.concepts] == sorted(
            (c.contribution for c in e.concepts), reverse=True
        )
        for c in e.concepts:
            assert c.name == space.vocabulary.names[c.concept_id]
            assert c.contribution == pytest.approx(c.weight * c.user_value * c.item_value)


def test_declared_concepts_and_history_change_the_explanation(trained_sesa) -> None:
    space = trained_sesa.space
    item = next(
        i for i, c in zip(space.item_ids, trained_sesa.data.items.concepts, strict=True) if c
    )
    cold = space.explain("nobody", item)
    assert cold.biases["user"] == 0.0
    assert all(c.contribution == 0 for c in cold.concepts)
    strengths = [c.weight * c.item_value for c in cold.concepts]
    assert strengths == sorted(strengths, reverse=True)  # the item's strongest concepts first
    top = trained_sesa.data.vocab.names[int(np.argmax(space.item_vectors[space._items[item]]))]
    declared = space.explain("nobody", item, declared=[top.upper()])
    assert declared.top_concept == normalise_concept(top)
    assert declared.score > cold.score


def test_an_item_with_no_known_concept_still_scores(trained_sesa) -> None:
    space = trained_sesa.space
    assert trained_sesa.data.items.concepts[space._items["i_plain"]] == []
    users = np.array(["u0", "u1", "u2"], dtype=object)
    scores = space.score_numpy(
        users, [["i0", "i1"], [], ["i3"]], np.array(["i_plain"] * 3, dtype=object)
    )
    assert np.isfinite(scores).all()
    # its score rests on its text: a content bias and whatever concepts the text activates
    explained = space.explain("u0", "i_plain", history=["i0", "i1"])
    assert explained.biases["item"] != 0.0
    assert explained.score == pytest.approx(scores[0], abs=1e-9)
    # an item the space never saw is encoded from its text when given, else scores by bias
    texts = ["espresso barista roast", None, ""]
    unseen = np.array(["new_item"] * 3, dtype=object)
    with_text = space.score_numpy(users, [[], [], []], unseen, item_texts=texts)
    without = space.score_numpy(users, [[], [], []], unseen)
    assert np.isfinite(with_text).all() and np.isfinite(without).all()
    assert with_text[0] != without[0]


def test_space_scores_agree_with_the_torch_model(trained_sesa, concept_world: Path) -> None:
    model, space = trained_sesa.model, trained_sesa.space
    rows = _test_rows(concept_world).take(np.arange(40))
    users, user_bias = space.users(rows.user_ids, rows.histories)
    items, item_bias = space.items(rows.item_ids)
    with torch.no_grad():
        expected = model.pair_scores(
            torch.from_numpy(users).float(),
            torch.from_numpy(items).float(),
            torch.from_numpy(user_bias).float(),
            torch.from_numpy(item_bias).float(),
        ).numpy()
    np.testing.assert_allclose(
        space.score_numpy(rows.user_ids, rows.histories, rows.item_ids), expected, atol=1e-4
    )


def test_the_space_is_a_match_feature(trained_sesa, concept_world: Path) -> None:
    space = trained_sesa.space
    rows = _test_rows(concept_world).take(np.arange(10))
    assert isinstance(space, MatchFeature) and space.name == "sesa"
    matrix = match_matrix([space], rows.user_ids, rows.histories, rows.item_ids)
    assert matrix.shape == (10, 1) and matrix.dtype == torch.float32
    expected = space.score_numpy(rows.user_ids, rows.histories, rows.item_ids).astype(np.float32)
    np.testing.assert_array_equal(matrix[:, 0].numpy(), expected)


def test_the_ranker_match_feature_drops_the_id_biases_but_keeps_the_content_bias(
    trained_sesa, concept_world: Path, tmp_path: Path
) -> None:
    space, model = trained_sesa.space, trained_sesa.model
    match = space.match_feature()
    rows = _test_rows(concept_world).take(np.arange(30))
    users, _ = space.users(rows.user_ids, rows.histories)
    items, _ = space.items(rows.item_ids)
    _, content, _ = model.encode_texts(
        [trained_sesa.data.items.texts[p] for p in trained_sesa.data.items.positions(rows.item_ids)]
    )
    expected = (space.weights * users * items).sum(1) + content
    np.testing.assert_allclose(
        match.score_numpy(rows.user_ids, rows.histories, rows.item_ids), expected, atol=1e-5
    )
    assert not np.allclose(
        space.score_numpy(rows.user_ids, rows.histories, rows.item_ids), expected, atol=1e-3
    )
    export_space_bundle(space, model, tmp_path / "b")
    np.testing.assert_array_equal(
        load_space(tmp_path / "b")
        .match_feature()
        .score_numpy(rows.user_ids, rows.histories, rows.item_ids),
        match.score_numpy(rows.user_ids, rows.histories, rows.item_ids),
    )


def test_bundle_round_trip_gives_identical_scores_and_explanations(
    trained_sesa, concept_world: Path, tmp_path: Path
) -> None:
    version = export_space_bundle(trained_sesa.space, trained_sesa.model, tmp_path / "bundles")
    loaded = load_space(tmp_path / "bundles")
    rows = _test_rows(concept_world)
    before = trained_sesa.space.score_numpy(rows.user_ids, rows.histories, rows.item_ids)
    after = loaded.score_numpy(rows.user_ids, rows.histories, rows.item_ids)
    np.testing.assert_array_equal(before, after)
    for n in range(0, len(rows), 29):
        args = (rows.user_ids[n], rows.item_ids[n])
        assert loaded.explain(*args, history=rows.histories[n]) == trained_sesa.space.explain(
            *args, history=rows.histories[n]
        )
    assert loaded.explain("u1", "cold", item_text="recipe kitchen") == trained_sesa.space.explain(
        "u1", "cold", item_text="recipe kitchen"
    )
    # the bundle's model embeds raw item rows into the same sparse concept vectors (to float32
    # rounding: a batch of one runs the GRU's arithmetic in another order than the export's)
    bundle = load_bundle(version)
    frame = pd.DataFrame({"title": ["Untitled"], "text": ["just some words nobody labelled"]})
    stored = trained_sesa.space.item_vectors[trained_sesa.space._items["i_plain"]]
    embedded = bundle.embed("item", frame)[0]
    np.testing.assert_array_equal(embedded > 0, stored > 0)
    np.testing.assert_allclose(embedded, stored, rtol=1e-5, atol=1e-7)


def test_an_altered_item_vector_file_is_refused(trained_sesa, tmp_path: Path) -> None:
    version = export_space_bundle(trained_sesa.space, trained_sesa.model, tmp_path / "b")
    with open(version / "items.parquet", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(BundleError, match="items.parquet: checksum mismatch"):
        load_space(version)


def test_esa_is_an_unsupervised_cosine_space_with_exact_explanations(
    trained_sesa, concept_world: Path
) -> None:
    esa = build_esa(trained_sesa.data, top_k=3)
    rows = _test_rows(concept_world)
    scores = esa.score_numpy(rows.user_ids, rows.histories, rows.item_ids)
    assert (scores >= -1e-9).all() and (scores <= 1 + 1e-9).all()
    assert auc(rows.labels, scores) > 0.6
    e = esa.explain(rows.user_ids[0], rows.item_ids[0], history=rows.histories[0])
    assert math.fsum([c.contribution for c in e.concepts] + list(e.biases.values())) == e.score
    assert e.score == pytest.approx(scores[0], abs=1e-9)
    held = trained_sesa.data.holdout
    assert held.any()
    assert concept_precision(esa, trained_sesa.data.items, held, k=1)["precision@1"] > 0.5


def test_sesa_predicts_the_concepts_of_items_whose_labels_were_held_back(trained_sesa) -> None:
    data = trained_sesa.data
    result = concept_precision(trained_sesa.space, data.items, data.holdout, k=1)
    assert result["items"] >= 5
    assert result["precision@1"] > 0.5  # 8 concepts: chance is about 0.2


def test_latent_baseline_has_unnamed_dense_dimensions(concept_world: Path) -> None:
    from recsys.concepts.train import train_sesa

    cfg = concept_config(concept_world.parent, variant="latent")
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": 1})})
    run = train_sesa(cfg, concept_world)
    space = run.space
    assert not space.explicit and space.dim < len(space.vocabulary)
    assert space.dimension_names()[0] == ("latent:0", "latent:0")
    rows = _test_rows(concept_world)
    assert np.isfinite(space.score_numpy(rows.user_ids, rows.histories, rows.item_ids)).all()

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from recsys.bundle import load_bundle
from recsys.models.match import MatchFeature, match_matrix
from recsys.omni.bundle import (
    OMNI_TABLE,
    OmniTableError,
    export_omni_bundle,
    read_item_table,
    write_item_table,
)
from recsys.omni.fusion import OmniModalEncoder
from recsys.omni.match_feature import OmniMatchFeature


def test_item_table_round_trips_and_a_failed_write_keeps_the_old_table(tmp_path: Path) -> None:
    path = tmp_path / OMNI_TABLE
    vectors = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    write_item_table(path, np.array(["a", "b", "c"], dtype=object), vectors)
    ids, back = read_item_table(path)
    assert ids.tolist() == ["a", "b", "c"]
    np.testing.assert_array_equal(back, vectors)
    bad = vectors.copy()
    bad[1, 2] = np.nan
    with pytest.raises(OmniTableError, match="non-finite embedding for item 'b'"):
        write_item_table(path, np.array(["a", "b", "c"], dtype=object), bad)
    np.testing.assert_array_equal(read_item_table(path)[1], vectors)
    assert sorted(p.name for p in tmp_path.iterdir()) == [OMNI_TABLE]


def test_a_corrupt_item_table_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / OMNI_TABLE
    path.write_bytes(b"PAR1 garbage")
    with pytest.raises(OmniTableError, match=str(path)):
        read_item_table(path)
    with pytest.raises(OmniTableError, match="no omni item table"):
        read_item_table(tmp_path / "missing.parquet")


def test_an_omni_bundle_embeds_new_items_like_the_model_and_holds_the_table(
    tmp_path: Path, items: pa.Table, encoder: OmniModalEncoder
) -> None:
    version = export_omni_bundle(tmp_path / "bundles", encoder, items.slice(0, 30))
    bundle = load_bundle(version)
    new_items = items.slice(30).to_pandas()  # not in the exported table
    np.testing.assert_allclose(
        bundle.embed("item", new_items), encoder.embed_items(new_items), atol=1e-6
    )
    ids, vectors = read_item_table(version / OMNI_TABLE)
    assert ids.tolist() == items["item_id"].to_pylist()[:30]
    np.testing.assert_allclose(vectors, encoder.embed_items(items.slice(0, 30)), atol=1e-6)


def test_match_score_is_the_cosine_with_the_mean_of_the_history() -> None:
    vectors = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], dtype=np.float32)
    feature = OmniMatchFeature(["a", "b", "c", "d"], vectors, history_length=2)
    assert isinstance(feature, MatchFeature)
    scores = feature.score(
        np.array(["u1", "u2", "u3", "u4"], dtype=object),
        [["c", "a", "b"], [], ["a", "unknown"], ["a"]],
        np.array(["d", "a", "a", "never-seen"], dtype=object),
    )
    # u1: last 2 = a, b -> mean (1,1,0)/sqrt2, item d (1,1,0)/sqrt2 -> 1
    # u2: empty history -> 0; u3: unknown history ids skipped -> a.a = 1; u4: unknown item -> 0
    torch.testing.assert_close(scores, torch.tensor([1.0, 0.0, 1.0, 0.0]))
    matrix = match_matrix([feature], np.array(["u"], dtype=object), [["b"]],
                          np.array(["a"], dtype=object))  # fmt: skip
    assert matrix.shape == (1, 1) and float(matrix[0, 0]) == 0.0


def test_match_feature_reads_the_bundle_table(tmp_path: Path) -> None:
    path = tmp_path / OMNI_TABLE
    write_item_table(path, np.array(["x", "y"], dtype=object), np.eye(2, dtype=np.float32))
    feature = OmniMatchFeature.from_table(path)
    scores = feature.score(np.array(["u"], dtype=object), [["x"]], np.array(["x"], dtype=object))
    assert float(scores[0]) == pytest.approx(1.0)


def test_match_scores_of_long_histories_with_unknown_ids_match_a_plain_reference() -> None:
    rng = np.random.default_rng(0)
    ids = [f"i{k}" for k in range(30)]
    vectors = rng.normal(size=(30, 8)).astype(np.float32)
    feature = OmniMatchFeature(ids, vectors, history_length=3)
    histories = [
        [str(rng.choice(ids + ["x", "y"])) for _ in range(rng.integers(0, 9))] for _ in range(50)
    ]
    items = np.array([str(rng.choice(ids)) for _ in range(50)], dtype=object)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    expected = []
    for history, item in zip(histories, items, strict=True):
        known = [ids.index(h) for h in history if h in ids][-3:]
        if not known:
            expected.append(0.0)
            continue
        query = unit[known].sum(0)
        expected.append(float(query @ unit[ids.index(item)] / np.linalg.norm(query)))
    scores = feature.score(np.array(["u"] * 50, dtype=object), histories, items)
    np.testing.assert_allclose(scores.numpy(), expected, atol=1e-5)


def test_out_of_fold_feature_scores_each_user_with_its_own_folds_table() -> None:
    from recsys.omni.match_feature import UserFoldMatchFeature, user_fold

    ids = ["a", "b"]
    # fold 0's table says a ~ b, fold 1's says a is orthogonal to b
    near = OmniMatchFeature(ids, np.array([[1, 0], [1, 0]], dtype=np.float32))
    far = OmniMatchFeature(ids, np.array([[1, 0], [0, 1]], dtype=np.float32))
    feature = UserFoldMatchFeature([near, far])
    assert isinstance(feature, MatchFeature)
    users = np.array([f"u{k}" for k in range(40)], dtype=object)
    folds = user_fold(users, 2)
    assert 0 < folds.sum() < 40  # both folds are used
    np.testing.assert_array_equal(user_fold(users, 2), folds)  # stable
    scores = feature.score(users, [["a"]] * 40, np.array(["b"] * 40, dtype=object))
    np.testing.assert_allclose(scores.numpy(), np.where(folds == 0, 1.0, 0.0), atol=1e-6)


def test_standardised_scores_have_zero_mean_and_unit_std_on_the_rows_they_were_fitted_on() -> None:
    from recsys.omni.match_feature import MatchScale

    rng = np.random.default_rng(1)
    ids = [f"i{k}" for k in range(20)]
    feature = OmniMatchFeature(ids, rng.normal(size=(20, 6)).astype(np.float32), 3)
    histories = [[str(rng.choice(ids)) for _ in range(rng.integers(1, 6))] for _ in range(200)]
    items = np.array([str(rng.choice(ids)) for _ in range(200)], dtype=object)
    users = np.array(["u"] * 200, dtype=object)
    scale = feature.fit_scale(histories, items)
    raw = feature.score(users, histories, items).numpy()
    assert scale == MatchScale(pytest.approx(raw.mean()), pytest.approx(raw.std(), rel=1e-4))
    standard = feature.with_scale(scale)
    z = standard.score(users, histories, items).numpy()
    assert abs(z.mean()) < 1e-4 and z.std() == pytest.approx(1.0, rel=1e-3)
    np.testing.assert_allclose(z, (raw - scale.mean) / scale.std, atol=1e-5)
    # no history, or an item outside the table: the neutral 0, not the raw 0 (= -mean/std)
    empty = standard.score(
        np.array(["u", "u"], dtype=object), [[], ["i1"]], np.array(["i2", "new"], dtype=object)
    )
    torch.testing.assert_close(empty, torch.zeros(2))
    assert feature.scale is None  # with_scale leaves the original raw


def test_fitting_a_scale_without_any_scored_row_names_the_feature() -> None:
    feature = OmniMatchFeature(["a"], np.ones((1, 2), dtype=np.float32), name="omni")
    with pytest.raises(ValueError, match="'omni': 0 of 2 rows"):
        feature.fit_scale([[], ["zzz"]], np.array(["a", "a"], dtype=object))


def test_match_scale_is_stored_with_the_item_table_and_read_back(tmp_path: Path) -> None:
    from recsys.omni.bundle import read_match_scale

    path = tmp_path / OMNI_TABLE
    ids = np.array(["x", "y"], dtype=object)
    vectors = np.array([[1, 0], [0.6, 0.8]], dtype=np.float32)
    write_item_table(path, ids, vectors, match_scale=(0.5, 0.25))
    assert read_match_scale(path) == (0.5, 0.25)
    feature = OmniMatchFeature.from_table(path)
    score = feature.score(np.array(["u"], dtype=object), [["x"]], np.array(["y"], dtype=object))
    assert float(score[0]) == pytest.approx((0.6 - 0.5) / 0.25)
    write_item_table(path, ids, vectors)  # no scale: raw cosines
    assert read_match_scale(path) is None and OmniMatchFeature.from_table(path).scale is None
    with pytest.raises(OmniTableError, match="std > 0"):
        write_item_table(path, ids, vectors, match_scale=(0.5, 0.0))


def test_a_table_with_corrupt_match_scale_metadata_is_refused_naming_the_file(
    tmp_path: Path,
) -> None:
    import pyarrow.parquet as pq

    from recsys.omni.bundle import MATCH_SCALE_KEY

    path = tmp_path / OMNI_TABLE
    write_item_table(path, np.array(["x"], dtype=object), np.ones((1, 2), dtype=np.float32))
    table = pq.read_table(path).replace_schema_metadata({MATCH_SCALE_KEY: b'{"mean": 0.5'})
    pq.write_table(table, path)
    with pytest.raises(OmniTableError, match=f"{path}: bad omni.match_scale metadata"):
        OmniMatchFeature.from_table(path)

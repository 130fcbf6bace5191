"""``Retrieve`` end to end: a real server on loopback answering from the current bundle
version's two-tier index (``<bundle>/index``, written as ``recsys index`` writes it).

The catalogue is small (tens of items), so the default shortlist covers it and every answer
must equal the brute-force top k of the bundle's item vectors.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pytest

import serving.service
from recsys.bundle import load_bundle, write_bundle_index
from recsys.retrieval.build import embed_items
from recsys.retrieval.compact import TierOneConfig
from recsys.retrieval.two_tier import TwoTierIndex
from serving.client import RecsysClient, encode_matrix, user_features
from serving.config import ServerConfig
from serving.features import Catalogue
from tests.serving.fixtures import V1, V2, ServingData, export_perturbed, serving_data
from tests.serving.harness import ServerThread

__all__ = ["serving_data"]  # the shared fixture

MAX_K = 20


def add_index(bundle_dir: Path, items: Path) -> None:
    """Write ``bundle_dir/index`` from the bundle's own item vectors (what ``recsys index``
    does, without a pipeline config)."""
    ids, vectors = embed_items(load_bundle(bundle_dir), items)
    index = TwoTierIndex.build(vectors, ids, TierOneConfig(seed=0))
    write_bundle_index(bundle_dir, index.save)


@pytest.fixture(scope="module")
def indexed_root(serving_data: ServingData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("indexed") / "bundles"
    shutil.copytree(serving_data.embedder_root, root)
    add_index(root / V1, serving_data.items)
    return root


def _config(data: ServingData, root: Path, **kw: object) -> ServerConfig:
    base = {
        "embedder_bundles": str(root),
        "items": str(data.items),
        "users": str(data.users),
        "reload_interval_s": 0.0,
        "compute_threads": 1,
        "max_k": MAX_K,
    }
    return ServerConfig.model_validate({**base, **kw})


@pytest.fixture(scope="module")
def server(serving_data: ServingData, indexed_root: Path) -> Iterator[ServerThread]:
    with ServerThread(_config(serving_data, indexed_root)) as s:
        yield s


def brute_force(
    bundle_dir: Path, items: Path, query: np.ndarray, k: int, exclude: set[str] = frozenset()
) -> tuple[list[str], np.ndarray]:
    """Top ``k`` item ids and scores of ``query (D,)`` over every catalogue item's vector
    (ties by catalogue row), skipping ``exclude``."""
    ids, vectors = embed_items(load_bundle(bundle_dir), items)
    scores = vectors @ query.astype(np.float32)
    order = [r for r in np.lexsort((np.arange(len(ids)), -scores)) if ids[r] not in exclude]
    top = order[:k]
    return [str(ids[r]) for r in top], scores[top]


def user_vector(bundle_dir: Path, users: Path, user_id: str) -> np.ndarray:
    rows, found = Catalogue.load(users, "user").rows([user_id])
    assert found == [True]
    return load_bundle(bundle_dir).embed("user", rows)[0]


def _user_ids(data: ServingData, n: int) -> list[str]:
    return [str(u) for u in pd.read_parquet(data.users).user_id.tolist()[:n]]


def _item_ids(data: ServingData, n: int) -> list[str]:
    return [str(i) for i in pd.read_parquet(data.items).item_id.tolist()[:n]]


def test_retrieve_for_a_user_id_is_the_brute_force_top_k_of_the_bundles_item_vectors(
    serving_data: ServingData, indexed_root: Path, server: ServerThread
) -> None:
    client = server.client()
    for user in _user_ids(serving_data, 5):
        got = client.retrieve(user, 10)
        query = user_vector(indexed_root / V1, serving_data.users, user)
        ids, scores = brute_force(indexed_root / V1, serving_data.items, query, 10)
        assert got.model_version == V1
        assert got.item_ids == ids
        np.testing.assert_allclose(got.scores, scores, rtol=1e-5, atol=1e-5)


def test_retrieve_for_an_explicit_vector_is_the_brute_force_top_k(
    serving_data: ServingData, indexed_root: Path, server: ServerThread
) -> None:
    dim = load_bundle(indexed_root / V1).model.tower_dim
    query = np.random.default_rng(7).normal(size=dim).astype(np.float32)
    got = server.client().retrieve(vector=query, k=MAX_K)
    ids, scores = brute_force(indexed_root / V1, serving_data.items, query, MAX_K)
    assert got.item_ids == ids
    np.testing.assert_allclose(got.scores, scores, rtol=1e-5, atol=1e-5)


def test_retrieve_from_request_features_embeds_them_like_embed_user(
    serving_data: ServingData, server: ServerThread
) -> None:
    client = server.client()
    features = user_features(
        history=_item_ids(serving_data, 3), concepts=["c1"], attributes={"country": "zz"}
    )
    vector = client.embed_user("new-user", features).vectors[0]
    by_features = client.retrieve("new-user", 5, features=features)
    by_vector = client.retrieve(vector=vector, k=5)
    assert by_features.item_ids == by_vector.item_ids
    np.testing.assert_allclose(by_features.scores, by_vector.scores, rtol=1e-5, atol=1e-5)


def test_excluded_ids_and_the_users_history_are_never_returned(
    serving_data: ServingData, indexed_root: Path, server: ServerThread
) -> None:
    client = server.client()
    users = pd.read_parquet(serving_data.users)
    # a user whose history reaches their own top k, so excluding it changes the answer
    with_history = [
        (str(row.user_id), {str(i) for i in row.history})
        for row in users.itertuples()
        if set(client.retrieve(str(row.user_id), MAX_K).item_ids) & set(map(str, row.history))
    ]
    assert with_history, "no user's history reaches their top k: the test would show nothing"
    user, history = with_history[0]
    top = client.retrieve(user, 5).item_ids
    excluded = {i for i in top[:3] if i not in history} | {"not-in-the-catalogue"}
    got = client.retrieve(user, MAX_K, exclude=sorted(excluded), exclude_history=True)
    assert not (set(got.item_ids) & (excluded | history))
    query = user_vector(indexed_root / V1, serving_data.users, user)
    ids, _ = brute_force(indexed_root / V1, serving_data.items, query, MAX_K, excluded | history)
    assert got.item_ids == ids


def test_a_bundle_without_an_index_answers_failed_precondition_naming_recsys_index(
    serving_data: ServingData,
) -> None:
    with ServerThread(_config(serving_data, serving_data.embedder_root)) as s:
        with pytest.raises(grpc.RpcError) as e:
            s.client().retrieve(_user_ids(serving_data, 1)[0], 5)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "recsys index" in e.value.details() and V1 in e.value.details()


def test_an_unknown_user_without_a_vector_is_not_found(server: ServerThread) -> None:
    with pytest.raises(grpc.RpcError) as e:
        server.client().retrieve("nobody", 5)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and "nobody" in e.value.details()


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda c, u: c.retrieve(u, 0), "k: must be at least 1"),
        (lambda c, u: c.retrieve(u, MAX_K + 1), f"k: {MAX_K + 1}, at most {MAX_K}"),
        (lambda c, u: c.retrieve(vector=np.ones(3, np.float32), k=5), "user_vector: shape [3]"),
        (lambda c, u: c.retrieve(vector=np.ones((2, 8), np.float32), k=5), "user_vector: shape"),
        (lambda c, u: c.retrieve("", 5), "user_id: empty id"),
        (lambda c, u: c.retrieve(u, 5, exclude=["i1", " "]), "exclude_ids[1]: empty id"),
    ],
)
def test_malformed_retrieve_requests_get_invalid_argument_naming_the_field(
    serving_data: ServingData, server: ServerThread, call: object, field: str
) -> None:
    with pytest.raises(grpc.RpcError) as e:
        call(server.client(), _user_ids(serving_data, 1)[0])  # type: ignore[operator]
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in e.value.details()


def test_a_vector_with_a_wrong_byte_count_gets_invalid_argument(server: ServerThread) -> None:
    request = serving.service.pb.RetrieveRequest(k=5)
    request.user_vector.CopyFrom(encode_matrix(np.ones(8, np.float32)))
    request.user_vector.data = request.user_vector.data[:-4]
    with RecsysClient(server.target) as client, pytest.raises(grpc.RpcError) as e:
        client.stub.Retrieve(request, timeout=5)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "user_vector.data" in e.value.details()


def test_the_index_is_opened_once_per_version_and_follows_a_hot_swap(
    serving_data: ServingData,
    indexed_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = tmp_path / "bundles"
    shutil.copytree(indexed_root, root)
    opened: list[str] = []
    real_open = serving.service.open_bundle_index

    def counting_open(bundle):  # noqa: ANN001, ANN202
        opened.append(bundle.version)
        return real_open(bundle)

    monkeypatch.setattr(serving.service, "open_bundle_index", counting_open)
    dim = load_bundle(root / V1).model.tower_dim
    query = np.random.default_rng(3).normal(size=dim).astype(np.float32)
    with ServerThread(_config(serving_data, root)) as s:
        answers, failures = [], []

        def caller() -> None:
            client = s.client()
            for _ in range(5):
                try:
                    answers.append(client.retrieve(vector=query, k=10))
                except grpc.RpcError as e:
                    failures.append(e)

        threads = [threading.Thread(target=caller) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        add_index(export_perturbed(root / V1, root, V2, shift=0.5), serving_data.items)
        assert s.server.refresh()
        answers.append(s.client().retrieve(vector=query, k=10))
        answers.append(s.client().retrieve(vector=query, k=10))
    assert not failures and opened == [V1, V2]
    for a in answers:
        ids, scores = brute_force(root / a.model_version, serving_data.items, query, 10)
        assert a.item_ids == ids
        np.testing.assert_allclose(a.scores, scores, rtol=1e-5, atol=1e-5)
    assert {a.model_version for a in answers} == {V1, V2}


def test_the_pipeline_smoke_check_retrieves_from_an_indexed_bundle(
    serving_data: ServingData, indexed_root: Path
) -> None:
    from serving.smoke import smoke_check

    got = smoke_check(_config(serving_data, indexed_root))
    assert got["Retrieve"]["code"] == "OK" and got["Retrieve"]["model_version"] == V1

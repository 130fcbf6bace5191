"""Explain over real gRPC: a SESA bundle trained and exported by the library, served on loopback.

The served explanation must be the library's (``ConceptSpace.explain``) for the same user and
item: from the users table, from request features, and for an item the bundle never saw
(encoded from the item catalogue's text); contributions plus biases equal the score.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import grpc
import pandas as pd
import pytest

from recsys.concepts.checkpoint import export_space_bundle, load_space
from recsys.concepts.space import ConceptSpace
from recsys.concepts.train import train_sesa
from serving.client import user_features
from serving.config import ServerConfig
from tests.recsys.concepts.conftest import concept_config, write_concept_world
from tests.serving.harness import ServerThread


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("explain")
    examples = write_concept_world(root)
    run = train_sesa(concept_config(root), examples)
    export_space_bundle(run.space, run.model, root / "bundles")
    # a catalogue item the bundle never saw: it must be explained from its text
    items = pd.read_parquet(root / "raw" / "items.parquet")
    cold = {"item_id": "i_new", "title": "Espresso Barista", "text": "roast", "concepts": []}
    items = pd.concat([items, pd.DataFrame([cold])], ignore_index=True)
    items.to_parquet(root / "raw" / "catalogue.parquet")
    return root


@pytest.fixture(scope="module")
def space(world: Path) -> ConceptSpace:
    return load_space(world / "bundles")


@pytest.fixture(scope="module")
def server(world: Path) -> Iterator[ServerThread]:
    config = ServerConfig(
        explainer_bundles=str(world / "bundles"),
        items=str(world / "raw" / "catalogue.parquet"),
        users=str(world / "raw" / "users.parquet"),
        reload_interval_s=0.0,
        compute_threads=1,
    )
    with ServerThread(config) as s:
        yield s


def _check(answer, want) -> None:  # noqa: ANN001
    assert [c.concept for c in answer.contributions] == [c.name for c in want.concepts]
    assert [c.display for c in answer.contributions] == [c.display for c in want.concepts]
    assert [c.contribution for c in answer.contributions] == [c.contribution for c in want.concepts]
    assert dict(answer.biases) == want.biases and answer.score == want.score
    total = math.fsum([c.contribution for c in answer.contributions] + list(answer.biases.values()))
    assert total == answer.score


def test_explain_from_the_users_table_is_the_librarys(
    server: ServerThread, space: ConceptSpace, world: Path
) -> None:
    users = pd.read_parquet(world / "raw" / "users.parquet").set_index("user_id")
    for user, item in (("u1", "i3"), ("u7", "i12"), ("u2", "i_plain")):
        answer = server.client().explain(user, item)
        declared = [str(c) for c in users.loc[user, "concepts"]]
        _check(answer, space.explain(user, item, history=[], declared=declared))
        assert answer.model_version and answer.contributions or item == "i_plain"


def test_explain_with_request_features_uses_them(server: ServerThread, space: ConceptSpace) -> None:
    features = user_features(history=["i1", "i2", "i5"], concepts=["jazz", "Coffee"])
    answer = server.client().explain("u1", "i4", features=features)
    want = space.explain("u1", "i4", history=["i1", "i2", "i5"], declared=["jazz", "Coffee"])
    _check(answer, want)
    assert want != space.explain("u1", "i4", history=[], declared=[])


def test_an_item_the_bundle_never_saw_is_explained_from_its_catalogue_text(
    server: ServerThread, space: ConceptSpace
) -> None:
    assert not space.knows_item("i_new")
    answer = server.client().explain("u3", "i_new", features=user_features(concepts=["coffee"]))
    want = space.explain(
        "u3", "i_new", history=[], declared=["coffee"], item_text="Espresso Barista roast"
    )
    _check(answer, want)
    assert answer.contributions and answer.contributions[0].concept == "coffee"


def test_unknown_items_and_missing_fields_are_refused_by_name(server: ServerThread) -> None:
    client = server.client()
    with pytest.raises(grpc.RpcError) as e:
        client.explain("u1", "no-such-item")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and "no-such-item" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        client.explain("u1", " ")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "item_id" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        client.explain("", "i1")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "user_id" in e.value.details()

"""The gRPC server end to end: real bundles, a real server on loopback, real redis-server.

Bundles come from ``tests/serving/conftest.py`` (a tiny two-tower and ranker trained on a
small examples directory); the server runs on its own event loop thread
(``tests/serving/harness.py``) and is called with ``serving.client.RecsysClient``.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from recsys.bundle import load_bundle
from recsys.embedding_keys import CompletionMarker, embedding_key, encode_vector, marker_key
from recsys.features.spec import FeatureSpec
from serving.client import user_features
from serving.config import RedisSettings, ServerConfig
from serving.features import Catalogue, rank_probabilities
from tests.integration.redis_server import free_port, redis_binary, redis_server
from tests.serving.fixtures import V1, V2, ServingData, export_perturbed, serving_data
from tests.serving.harness import ServerThread

pytestmark = [pytest.mark.redis]
__all__ = ["serving_data"]  # the shared fixture


def _config(data: ServingData, **kw: object) -> ServerConfig:
    base = {
        "embedder_bundles": str(data.embedder_root),
        "ranker_bundles": str(data.ranker_root),
        "items": str(data.items),
        "users": str(data.users),
        "reload_interval_s": 0.0,
        "compute_threads": 1,
    }
    return ServerConfig.model_validate({**base, **kw})


@pytest.fixture(scope="module")
def server(serving_data: ServingData) -> Iterator[ServerThread]:
    with ServerThread(_config(serving_data)) as s:
        yield s


def _expected(bundle_path: Path, catalogue: Path, kind: str, ids: list[str]) -> np.ndarray:
    rows, found = Catalogue.load(catalogue, kind).rows(ids)
    assert all(found)
    return load_bundle(bundle_path).embed(kind, rows)


def _item_ids(data: ServingData, n: int, start: int = 0) -> list[str]:
    """``n`` catalogue item ids from ``start`` on, cycling when the catalogue is smaller."""
    ids = pd.read_parquet(data.items).item_id.tolist()
    return [ids[(start + k) % len(ids)] for k in range(n)]


class SlowCatalogue(Catalogue):
    """The item catalogue, 0.5 s slower per lookup: keeps calls in flight during a stop."""

    def rows(self, ids):  # noqa: ANN001, ANN201
        time.sleep(0.5)
        return super().rows(ids)


# ---------------------------------------------------------------------------------------------
# every RPC


def test_get_embeddings_are_the_bundle_vectors_and_unknown_ids_are_not_found(
    server: ServerThread, serving_data: ServingData
) -> None:
    ids = _item_ids(serving_data, 5)
    got = server.client().get_embeddings("item", [ids[0], "no-such-item", *ids[1:]])
    assert got.model_version == V1
    assert got.found.tolist() == [True, False, True, True, True, True]
    assert got.vectors.shape == (6, 8) and got.vectors.dtype == np.float32
    want = _expected(serving_data.embedder_root / V1, serving_data.items, "item", ids)
    np.testing.assert_allclose(got.vectors[[0, 2, 3, 4, 5]], want, rtol=1e-6, atol=1e-6)
    assert not got.vectors[1].any()


def test_embed_user_from_request_features_and_from_the_user_catalogue(
    server: ServerThread, serving_data: ServingData
) -> None:
    users = pd.read_parquet(serving_data.users)
    row = users.iloc[3]
    client = server.client()
    stored = client.embed_user(row.user_id)
    want = _expected(serving_data.embedder_root / V1, serving_data.users, "user", [row.user_id])
    np.testing.assert_allclose(stored.vectors, want, rtol=1e-6, atol=1e-6)
    given = client.embed_user(
        row.user_id,
        user_features(history=list(row.history)[:1], concepts=["c1"], attributes={"country": "zz"}),
    )
    assert given.found.all() and given.vectors.shape == (1, 8)
    assert not np.allclose(given.vectors, want), "request features must replace stored ones"
    assert not client.embed_user("nobody").found.any()


def test_served_score_equals_the_offline_score_of_the_same_example(
    server: ServerThread, serving_data: ServingData
) -> None:
    rows = ds.dataset(serving_data.examples / "split=test", format="parquet").to_table()
    example = rows.slice(0, 1)
    r = example.to_pylist()[0]
    got = server.client().score(
        r["user_id"],
        [r["item_id"], "no-such-item"],
        features=user_features(
            history=r["history"],
            concepts=r["s_user_concepts"],
            attributes={"country": r["s_user_country"][0]},
        ),
        ts_ms=int(pd.Timestamp(r["ts"]).value // 1_000_000),
        dense={"d_hour": r["d_hour"], "d_user_activity": r["d_user_activity"]},
    )
    bundle = load_bundle(serving_data.ranker_root / V1)
    spec = FeatureSpec.from_dict(bundle.meta["model"]["kwargs"]["spec"])
    offline = rank_probabilities(bundle.model, spec, example)
    assert got.model_version == V1 and got.found.tolist() == [True, False]
    assert got.probabilities[0] == pytest.approx(float(offline[0]), abs=1e-6)
    assert np.isnan(got.probabilities[1])


def test_score_reads_stored_user_features_when_the_request_has_none(
    server: ServerThread, serving_data: ServingData
) -> None:
    user = pd.read_parquet(serving_data.users).user_id.iloc[0]
    items = _item_ids(serving_data, 200)
    got = server.client().score(user, items)
    assert got.found.all() and got.probabilities.shape == (200,)
    assert ((got.probabilities > 0) & (got.probabilities < 1)).all()
    assert np.unique(got.probabilities).size > 20, "candidates must get their own scores"
    first = {i: p for i, p in zip(items, got.probabilities, strict=True)}
    again = np.array([first[i] for i in items])
    np.testing.assert_allclose(got.probabilities, again, atol=1e-6)  # same item, same score
    with pytest.raises(grpc.RpcError) as e:
        server.client().score("nobody", items[:2])
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and "nobody" in e.value.details()


def test_explain_without_a_sesa_bundle_is_a_failed_precondition(server: ServerThread) -> None:
    with pytest.raises(grpc.RpcError) as e:
        server.client().explain("u1", "i1")
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "Explain: no bundle root configured" in e.value.details()


def test_health_reports_serving_and_reflection_lists_the_service(server: ServerThread) -> None:
    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "recsys.v1.RecsysService"):
            status = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        answer = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=5)))
        names = {s.name for s in answer.list_services_response.service}
    assert "recsys.v1.RecsysService" in names and "grpc.health.v1.Health" in names


# ---------------------------------------------------------------------------------------------
# bad requests


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda c: c.get_embeddings("movie", ["i1"]), "kind"),
        (lambda c: c.get_embeddings("item", ["i1", " "]), "ids[1]"),
        (lambda c: c.get_embeddings("item", [f"i{n}" for n in range(41)]), "ids: 41 ids"),
        (lambda c: c.score("u1", []), "item_ids"),
        (lambda c: c.score("u1", [f"i{n}" for n in range(31)]), "item_ids: 31"),
        (lambda c: c.score("", ["i1"]), "user_id"),
        (lambda c: c.retrieve("u1", 51), "k: 51"),
        (lambda c: c.embed_user(""), "user_id"),
    ],
)
def test_malformed_requests_get_invalid_argument_naming_the_field(
    serving_data: ServingData, capped: ServerThread, call: object, field: str
) -> None:
    with pytest.raises(grpc.RpcError) as e:
        call(capped.client())  # type: ignore[operator]
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in e.value.details()


@pytest.fixture(scope="module")
def capped(serving_data: ServingData) -> Iterator[ServerThread]:
    config = _config(
        serving_data, max_ids_per_call=40, max_candidates=30, max_k=50, max_message_bytes=64 << 10
    )
    with ServerThread(config) as s:
        yield s


def test_a_request_over_the_message_size_limit_is_refused(capped: ServerThread) -> None:
    with pytest.raises(grpc.RpcError) as e:
        capped.client().get_embeddings("item", ["x" * (100 << 10)])
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_the_server_ends_a_call_at_its_deadline_not_when_its_work_would_finish(
    serving_data: ServingData,
) -> None:
    with ServerThread(_config(serving_data)) as s:
        s.server.servicer.catalogues["item"] = SlowCatalogue.load(serving_data.items, "item")
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as e:
            s.client().get_embeddings("item", _item_ids(serving_data, 3), timeout=0.2)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 0.45  # the lookup alone takes 0.5 s
        m = s.server.metrics

        def ended() -> float:
            return sum(
                m.value("recsys_requests_total", method="GetEmbeddings", code=c)
                for c in ("DEADLINE_EXCEEDED", "CANCELLED")
            )

        while not ended() and time.monotonic() - started < 0.45:
            time.sleep(0.01)
        assert ended() == 1, "the server still held the call after its deadline"


def test_prometheus_metrics_are_served_over_http(serving_data: ServingData) -> None:
    port = free_port()
    with ServerThread(_config(serving_data, metrics_port=port)) as s:
        s.client().get_embeddings("item", _item_ids(serving_data, 2))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    assert 'recsys_requests_total{code="OK",method="GetEmbeddings"} 1.0' in text
    assert 'recsys_cache_hits_total{tier="compute"} 2.0' in text
    assert "recsys_request_seconds_bucket" in text and "recsys_redis_errors_total 0.0" in text


def test_with_auth_on_a_call_without_the_token_is_unauthenticated(
    serving_data: ServingData,
) -> None:
    with ServerThread(_config(serving_data, auth_token="s3cret")) as s:
        ids = _item_ids(serving_data, 2)
        for client in (s.client(), s.client(token="wrong")):
            with pytest.raises(grpc.RpcError) as e:
                client.get_embeddings("item", ids)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert s.client(token="s3cret").get_embeddings("item", ids).found.all()
        with grpc.insecure_channel(s.target) as channel:  # probes need no token
            check = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            assert check.status == health_pb2.HealthCheckResponse.SERVING


# ---------------------------------------------------------------------------------------------
# cache tiers


def test_a_repeated_call_is_served_from_the_in_process_cache(serving_data: ServingData) -> None:
    with ServerThread(_config(serving_data)) as s:
        ids = _item_ids(serving_data, 10)
        first = s.client().get_embeddings("item", ids)
        m = s.server.metrics
        assert m.value("recsys_cache_hits_total", tier="compute") == 10
        second = s.client().get_embeddings("item", ids)
        assert m.value("recsys_cache_hits_total", tier="lru") == 10
        assert m.value("recsys_cache_hits_total", tier="compute") == 10
        np.testing.assert_array_equal(first.vectors, second.vectors)


def test_computed_vectors_are_written_back_to_redis_with_a_jittered_ttl_and_read_by_a_new_server(
    serving_data: ServingData, tmp_path: Path
) -> None:
    ids = _item_ids(serving_data, 12)
    with redis_server(tmp_path) as url:
        settings = RedisSettings(url=url, ttl_s=1000, ttl_jitter=0.5, timeout_s=0.5)
        with ServerThread(_config(serving_data, redis=settings)) as s:
            want = s.client().get_embeddings("item", ids).vectors
            s.run(s.server.store.drain())
        client = redis.Redis.from_url(url)
        keys = [embedding_key("recsys-online", V1, "item", i) for i in ids]
        ttls = [client.ttl(k) for k in keys]
        assert all(1000 - 5 <= t <= 1500 for t in ttls) and len(set(ttls)) > 1, ttls
        with ServerThread(_config(serving_data, redis=settings)) as s:
            got = s.client().get_embeddings("item", ids).vectors
            m = s.server.metrics
            assert m.value("recsys_cache_hits_total", tier="redis") == 12
            assert m.value("recsys_cache_hits_total", tier="compute") == 0
        np.testing.assert_array_equal(got, want)


def test_batch_warmed_vectors_are_read_only_while_their_completion_marker_exists(
    serving_data: ServingData, tmp_path: Path
) -> None:
    ids = _item_ids(serving_data, 3)
    marked = np.full(8, 7.0, np.float32)  # unlike any computed unit vector
    with redis_server(tmp_path) as url:
        client = redis.Redis.from_url(url)
        for i in ids:
            client.set(embedding_key("recsys", V1, "item", i), encode_vector(marked))
        settings = RedisSettings(url=url, timeout_s=0.5)
        with ServerThread(_config(serving_data, redis=settings)) as s:  # no marker yet
            assert not np.isclose(s.client().get_embeddings("item", ids).vectors, 7.0).any()
        marker = CompletionMarker(3, 8, "0" * 16, "2026-01-01T00:00:00Z")
        client.set(marker_key("recsys", V1, "item"), marker.to_json())
        with ServerThread(_config(serving_data, redis=settings)) as s:
            np.testing.assert_array_equal(
                s.client().get_embeddings("item", ids).vectors, np.stack([marked] * 3)
            )


def test_concurrent_misses_of_one_id_compute_it_once(serving_data: ServingData) -> None:
    with ServerThread(_config(serving_data)) as s:
        ids = _item_ids(serving_data, 30)
        clients = [s.client() for _ in range(8)]
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda c: c.get_embeddings("item", ids), clients))
        m = s.server.metrics
        assert m.value("recsys_cache_hits_total", tier="compute") == 30
        served = sum(m.value("recsys_cache_hits_total", tier=t) for t in ("lru", "shared"))
        assert served == 7 * 30
        for a in answers:
            np.testing.assert_array_equal(a.vectors, answers[0].vectors)


def test_a_call_waiting_on_another_calls_computation_never_inherits_its_deadline(
    serving_data: ServingData,
) -> None:
    with ServerThread(_config(serving_data, compute_threads=2)) as s:
        s.server.servicer.catalogues["item"] = SlowCatalogue.load(serving_data.items, "item")
        ids = _item_ids(serving_data, 2)
        with ThreadPoolExecutor(2) as pool:
            short = pool.submit(s.client().get_embeddings, "item", ids, timeout=0.3)
            time.sleep(0.1)  # the long call finds the short one's computation in flight
            long = pool.submit(s.client().get_embeddings, "item", ids, timeout=10)
            with pytest.raises(grpc.RpcError) as e:
                short.result()
            assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert long.result().found.all()


def _start_redis(port: int, workdir: Path) -> subprocess.Popen:
    args = [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    proc = subprocess.Popen(
        [*args, "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            redis.Redis(port=port).ping()
            return proc
        except redis.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    pytest.fail(f"redis-server on port {port} did not answer PING")


def test_redis_killed_during_a_stream_of_calls_fails_no_call_and_is_used_again_once_back(
    serving_data: ServingData, tmp_path: Path
) -> None:
    port = free_port()
    proc = _start_redis(port, tmp_path)
    try:
        url = f"redis://127.0.0.1:{port}/0"
        settings = RedisSettings(url=url, timeout_s=0.2, backoff_initial_s=0.05, backoff_max_s=0.2)
        all_ids = pd.read_parquet(serving_data.items).item_id.tolist()
        vectors = _expected(serving_data.embedder_root / V1, serving_data.items, "item", all_ids)
        want = dict(zip(all_ids, vectors, strict=True))
        with ServerThread(_config(serving_data, redis=settings, lru_entries=0)) as s:
            client, failures, calls = s.client(), [], 0
            m = s.server.metrics

            def call(n: int) -> None:
                nonlocal calls
                ids = [all_ids[(n * 3 + k) % len(all_ids)] for k in range(3)]
                try:
                    got = client.get_embeddings("item", ids)
                    np.testing.assert_allclose(
                        got.vectors, np.stack([want[i] for i in ids]), atol=1e-6
                    )
                    calls += 1
                except grpc.RpcError as e:
                    failures.append(e)

            for n in range(60):
                if n == 20:
                    proc.kill()
                    proc.wait()
                call(n)
            assert not failures and calls == 60
            assert m.value("recsys_redis_errors_total") >= 1
            hits_before = m.value("recsys_cache_hits_total", tier="redis")
            assert hits_before > 0
            proc = _start_redis(port, tmp_path)  # back, empty: write-backs refill it
            time.sleep(0.3)  # past the backoff
            for n in range(60, 120):
                call(n)
                time.sleep(0.005)
            assert not failures and calls == 120
            assert m.value("recsys_cache_hits_total", tier="redis") > hits_before
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------------------------------
# bundle registry


def test_hot_swap_under_concurrent_calls_fails_none_and_never_mixes_versions(
    serving_data: ServingData, tmp_path: Path
) -> None:
    root = tmp_path / "bundles"
    shutil.copytree(serving_data.embedder_root, root)
    ids = _item_ids(serving_data, 20)
    with ServerThread(_config(serving_data, embedder_bundles=str(root))) as s:
        stop, answers, failures = threading.Event(), [], []

        def caller() -> None:
            client = s.client()
            while not stop.is_set():
                try:
                    answers.append(client.get_embeddings("item", ids))
                except grpc.RpcError as e:
                    failures.append(e)

        threads = [threading.Thread(target=caller) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        export_perturbed(root / V1, root, V2, shift=0.5)
        assert s.server.refresh()
        time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join()
    expected = {v: _expected(root / v, serving_data.items, "item", ids) for v in (V1, V2)}
    assert not failures
    versions = {a.model_version for a in answers}
    assert versions == {V1, V2}
    for a in answers:
        np.testing.assert_allclose(a.vectors, expected[a.model_version], atol=1e-6)


def test_a_corrupt_bundle_is_refused_with_a_log_line_while_the_old_serves(
    serving_data: ServingData, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "bundles"
    shutil.copytree(serving_data.embedder_root, root)
    ids = _item_ids(serving_data, 4)
    with ServerThread(_config(serving_data, embedder_bundles=str(root))) as s:
        bad = export_perturbed(root / V1, root, V2, shift=0.5)
        weights = bad / "weights.pt"
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
        (root / ".export-host-1-abc").mkdir()  # an export in progress: never a version
        with caplog.at_level(logging.ERROR, logger="serving.registry"):
            assert not s.server.refresh()
        assert any(
            "refused" in r.message and V2 in r.message and "checksum" in r.message
            for r in caplog.records
        )
        got = s.client().get_embeddings("item", ids)
        assert got.model_version == V1 and got.found.all()
        meta = json.loads((root / V1 / "bundle.json").read_text())
        assert meta["version"] == V1


def test_the_newest_valid_version_is_served_at_start(
    serving_data: ServingData, tmp_path: Path
) -> None:
    root = tmp_path / "bundles"
    shutil.copytree(serving_data.embedder_root, root)
    export_perturbed(root / V1, root, V2, shift=0.5)
    (root / "20270101T000000Z-broken").mkdir()  # newest by name, but no bundle.json
    with ServerThread(_config(serving_data, embedder_bundles=str(root))) as s:
        assert s.client().get_embeddings("item", _item_ids(serving_data, 1)).model_version == V2


# ---------------------------------------------------------------------------------------------
# shutdown


def test_graceful_shutdown_drains_calls_in_flight(serving_data: ServingData) -> None:
    with ServerThread(_config(serving_data, compute_threads=4)) as s:
        slow = SlowCatalogue.load(serving_data.items, "item")
        s.server.servicer.catalogues["item"] = slow
        user = pd.read_parquet(serving_data.users).user_id.iloc[0]
        items = _item_ids(serving_data, 50)
        clients = [s.client(timeout=30) for _ in range(4)]
        pool = ThreadPoolExecutor(4)
        futures = [pool.submit(c.score, user, items) for c in clients]
        time.sleep(0.2)
        assert s.server.metrics.value("recsys_requests_total", method="Score", code="OK") == 0
        started = time.monotonic()
        s.stop(grace=20)  # returns once the in-flight calls have finished
        assert time.monotonic() - started > 0.1, "stop did not wait for the calls in flight"
        results = [f.result(timeout=5) for f in futures]
        pool.shutdown()
        assert all(r.found.all() for r in results)
        with pytest.raises(grpc.RpcError) as e:
            s.client(timeout=2).score(user, items[:2])
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_with_tls_on_only_a_client_trusting_the_certificate_gets_answers(
    serving_data: ServingData, tmp_path: Path
) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not found (needed to make a test certificate)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"]
        + ["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    config = _config(serving_data, tls_cert=str(cert), tls_key=str(key), auth_token="t")
    with ServerThread(config) as s:
        ids = _item_ids(serving_data, 2)
        secure = s.client(root_cert=cert.read_bytes(), token="t")
        assert secure.get_embeddings("item", ids).found.all()
        with pytest.raises(grpc.RpcError) as e:
            s.client(token="t", timeout=2).get_embeddings("item", ids)  # plaintext
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_pipeline_smoke_check_calls_each_rpc_once(serving_data: ServingData) -> None:
    from serving.smoke import smoke_check

    got = smoke_check(_config(serving_data))
    assert {k: v["code"] for k, v in got.items() if k != "port"} == {
        "GetEmbeddings": "OK",
        "EmbedUser": "OK",
        "Score": "OK",
        "Retrieve": "FAILED_PRECONDITION",  # these bundles have no index (see test_serving_retrieve)
        "Explain": "FAILED_PRECONDITION",  # no sesa bundle configured (test_serving_explain)
    }
    assert got["GetEmbeddings"]["model_version"] == V1 == got["Score"]["model_version"]

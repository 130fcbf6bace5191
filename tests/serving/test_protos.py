"""The checked-in generated gRPC code is what protos/ generates today."""

from __future__ import annotations

from pathlib import Path

from serving import gen_protos


def test_checked_in_generated_code_matches_the_protos(tmp_path: Path) -> None:
    fresh = gen_protos.generate(tmp_path / "gen")
    checked_in = sorted(p for p in gen_protos.OUT.iterdir() if p.is_file())
    assert [p.name for p in checked_in] == [p.name for p in fresh], "files differ"
    stale = [p.name for p in fresh if p.read_text() != (gen_protos.OUT / p.name).read_text()]
    assert not stale, f"serving/protos_gen is stale ({stale}): run python -m serving.gen_protos"


def test_generated_modules_import_without_touching_the_recsys_library() -> None:
    from serving.protos_gen import recsys_pb2, recsys_pb2_grpc

    service = recsys_pb2.DESCRIPTOR.services_by_name["RecsysService"]
    assert service.full_name == "recsys.v1.RecsysService"
    assert {m.name for m in service.methods} == {
        "GetEmbeddings",
        "EmbedUser",
        "Retrieve",
        "Score",
        "Explain",
    }
    assert hasattr(recsys_pb2_grpc, "RecsysServiceStub")

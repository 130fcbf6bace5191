"""Regenerate ``serving/protos_gen/`` from ``protos/recsys/v1/*.proto``.

    python -m serving.gen_protos            # rewrite the checked-in code
    python -m serving.gen_protos --out DIR  # write elsewhere (the staleness test)

``grpc_tools.protoc`` writes absolute imports named after the proto path
(``from recsys.v1 import recsys_pb2``), which would resolve to this repository's ``recsys``
library package; the generated modules are therefore written flat into one package and their
cross-imports rewritten to relative ones.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "protos"
OUT = ROOT / "serving" / "protos_gen"
_ABSOLUTE_IMPORT = re.compile(r"^from recsys\.v1 import (\w+)", re.MULTILINE)


def proto_files(proto_root: Path = PROTO_ROOT) -> list[Path]:
    return sorted((proto_root / "recsys" / "v1").glob("*.proto"))


def generate(out_dir: Path, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Write ``*_pb2.py``, ``*_pb2.pyi``, ``*_pb2_grpc.py`` and ``__init__.py`` into
    ``out_dir``; return the written paths (sorted)."""
    from grpc_tools import protoc  # build-time only

    protos = proto_files(proto_root)
    if not protos:
        raise FileNotFoundError(f"{proto_root}/recsys/v1: no .proto files")
    with tempfile.TemporaryDirectory() as tmp:
        include = Path(protoc.__file__).parent / "_proto"
        args = [
            "protoc",
            f"-I{proto_root}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *[str(p.relative_to(proto_root)) for p in protos],
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {[p.name for p in protos]}")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for src in sorted((Path(tmp) / "recsys" / "v1").iterdir()):
            text = _ABSOLUTE_IMPORT.sub(r"from . import \1", src.read_text())
            dst = out_dir / src.name
            dst.write_text(text)
            written.append(dst)
    init = out_dir / "__init__.py"
    init.write_text(
        '"""Generated from protos/recsys/v1 by serving/gen_protos.py; do not edit."""\n'
    )
    return sorted([*written, init])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.out == OUT and OUT.exists():
        shutil.rmtree(OUT)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

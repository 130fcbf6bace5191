"""Where a benchmark writes its JSON, and the examples it reads.

Every script writes ``benchmarks/results/<name>.json`` for a full run and
``benchmarks/results/<name>_quick.json`` for ``--quick``. A full run never replaces results that
are already there unless ``--out`` names the file: the committed numbers in docs/benchmarks.md
change only when someone asks for it. ``--out`` may point anywhere, inside the repository or not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def shown(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it, else absolute."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def output_path(name: str, quick: bool, out: str | None) -> Path:
    """The JSON file a run of benchmark ``name`` writes.

    ``out`` (``--out``) wins. Otherwise ``--quick`` writes ``<name>_quick.json`` (a smoke result,
    replaced by the next quick run) and a full run ``<name>.json``, refusing to replace one that
    exists. Call before the measurements, so a refused run costs nothing.
    """
    if out:
        return Path(out).expanduser().resolve()
    path = RESULTS / (f"{name}_quick.json" if quick else f"{name}.json")
    if not quick and path.exists():
        raise SystemExit(
            f"{shown(path)} already holds results (the ones docs/benchmarks.md cites); "
            f"pass --out {shown(path)} to replace them, or --out PATH to write elsewhere"
        )
    return path


def command_line(script: str, argv: Sequence[str] | None) -> str:
    """The command that produced a result, as docs/benchmarks.md shows it."""
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["benchmarks/" + script, *args])


def write_result(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as JSON to ``path`` through a temporary name and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    tmp.replace(path)
    print(f"# wrote {shown(path)}", flush=True)


def ensure_examples(config: str | Path, sets: dict[str, Any], examples: Path) -> Path:
    """``examples`` (a directory with ``manifest.json``), built by the real pipeline
    (``recsys pipeline --stages source,prepare``) from ``config`` and ``sets`` when missing."""
    if (examples / "manifest.json").exists():
        return examples
    cmd = [str(ROOT / ".venv/bin/recsys"), "pipeline", "--config", str(Path(config).resolve())]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={json.dumps(value)}"]
    cmd += ["--stages", "source,prepare"]
    print(f"# {shown(examples)} missing; running: {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)  # log lines: stderr
    print(f"# built; stage summaries in {shown(examples.parent / 'pipeline.json')}", flush=True)
    return examples

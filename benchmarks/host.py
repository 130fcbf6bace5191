"""The machine a benchmark runs on, for the first printed lines and the JSON of every script."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def describe_host() -> str:
    """CPU model, core count, current load average, Python and torch versions (if loaded)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    parts = [cpu, f"{os.cpu_count()} cores", f"load avg {load:.1f}"]
    parts.append(f"python {platform.python_version()}")
    try:
        import torch

        parts.append(f"torch {torch.__version__}")
    except ImportError:
        pass
    return ", ".join(parts)

"""Deterministic, vectorised, salted 64-bit hashing of raw feature values.

Identical across processes, machines and runs (never Python's ``hash()``, which is salted per
process). Strings are hashed with pandas' SipHash-2-4 (``pandas.util.hash_array``), keyed by the
salt, so we rely on a maintained, vectorised C implementation rather than hand-rolling one.
Integers already hashed (``uint64``/``int64``) are re-mixed per salt with ``mix64`` (SplitMix64
finaliser), which is what the embedding modules use to derive one bucket per (feature, probe).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def salt_key(salt: int) -> str:
    """The 16-character SipHash key for ``salt`` (pandas wants exactly 16 bytes)."""
    return f"{salt & 0xFFFFFFFFFFFFFFFF:016x}"


def hash_values(values: Sequence[object] | np.ndarray, salt: int = 0) -> np.ndarray:
    """Hash raw values (strings, ints or a mix; ``None`` allowed) to ``uint64``, keyed by ``salt``.

    Every value is hashed through its string form, so ``7`` and ``"7"`` collide on purpose:
    ids read from CSV and from Parquet must land on the same row.
    """
    arr = np.asarray(values, dtype=object)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    if arr.size and not isinstance(arr[0], str):
        arr = np.array(["" if v is None else str(v) for v in arr], dtype=object)
    return pd.util.hash_array(arr, encoding="utf8", hash_key=salt_key(salt), categorize=False)


def mix64(hashed: np.ndarray, salt: int) -> np.ndarray:
    """Re-hash ``uint64`` values with a salt (SplitMix64 finaliser); vectorised, wraps mod 2**64."""
    x = hashed.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= np.uint64(salt & 0xFFFFFFFFFFFFFFFF) * _GOLDEN
        x ^= x >> np.uint64(30)
        x *= _M1
        x ^= x >> np.uint64(27)
        x *= _M2
        x ^= x >> np.uint64(31)
    return x


def to_int64(hashed: np.ndarray) -> np.ndarray:
    """Reinterpret ``uint64`` hashes as ``int64`` (TorchRec ids are int64); no information lost."""
    return hashed.astype(np.uint64, copy=False).view(np.int64)

"""Deterministic, vectorised, salted 64-bit hashing of raw feature values.

Identical across processes, machines and runs (never Python's ``hash()``, which is salted per
process). Strings are hashed with pandas' SipHash-2-4 (``pandas.util.hash_array``), keyed by the
salt, so we rely on a maintained, vectorised C implementation rather than hand-rolling one.
Integers already hashed (``uint64``/``int64``) are re-mixed per salt with ``mix64`` (SplitMix64
finaliser), which is what the embedding modules use to derive one bucket per (feature, probe).
``mix64_torch`` is the same function in ``int64`` torch ops (bit-for-bit equal), used inside
``nn.Module.forward`` so that id remapping runs on whatever device the ids live on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # torch is not imported here: Spark workers hash without loading it
    import torch

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_U64 = (1 << 64) - 1


def salt_key(salt: int) -> str:
    """The 16-character SipHash key for ``salt`` (pandas wants exactly 16 bytes)."""
    return f"{salt & 0xFFFFFFFFFFFFFFFF:016x}"


def hash_values(values: Sequence[object] | np.ndarray, salt: int = 0) -> np.ndarray:
    """Hash raw values (strings, ints or a mix; ``None`` allowed) to ``uint64``, keyed by ``salt``.

    Every value is hashed through its string form, so ``7`` and ``"7"`` collide on purpose:
    ids read from CSV and from Parquet must land on the same row. ``None`` hashes like ``""``.
    """
    arr = np.asarray(values, dtype=object)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    # infer_dtype is one C pass; only non-string inputs pay for the Python-level conversion.
    if arr.size and pd.api.types.infer_dtype(arr, skipna=False) != "string":
        arr = np.array(["" if v is None else str(v) for v in arr], dtype=object)
    return pd.util.hash_array(arr, encoding="utf8", hash_key=salt_key(salt), categorize=False)


def name_salt(name: str, salt: int = 0) -> int:
    """A stable 64-bit salt derived from a name (e.g. ``"s_item#1"`` for probe 1 of s_item)."""
    return int(hash_values([name], salt)[0])


def mix64(hashed: np.ndarray, salt: int) -> np.ndarray:
    """Re-hash ``uint64`` values with a salt (SplitMix64 finaliser); vectorised, wraps mod 2**64."""
    x = np.asarray(hashed).astype(np.uint64, copy=True)
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


def as_signed(u: int) -> int:
    """The ``int64`` with the same 64 bits as the unsigned integer ``u``."""
    u &= _U64
    return u - (1 << 64) if u >= 1 << 63 else u


def salt_multiplier(salt: int) -> int:
    """``salt * GOLDEN mod 2**64`` as a signed int: the first step of ``mix64``, precomputable."""
    return as_signed((salt & _U64) * int(_GOLDEN))


def _lshr(x: torch.Tensor, s: int) -> torch.Tensor:
    # torch's >> on int64 is arithmetic; masking the sign-extended bits makes it logical.
    return (x >> s) & ((1 << (64 - s)) - 1)


def mix64_torch(x: torch.Tensor, multiplier: torch.Tensor | int) -> torch.Tensor:
    """``mix64`` on ``int64`` tensors: same 64 bits as the numpy version, any device.

    Args:
        x: ``int64`` ids (the bits of ``uint64`` hashes).
        multiplier: ``salt_multiplier(salt)``, a scalar or a tensor broadcastable to ``x``
            (one salt per element lets many (feature, probe) pairs mix in one pass).
    Multiplication wraps modulo 2**64 (two's complement), as numpy's ``uint64`` does.
    """
    x = x ^ multiplier
    x = x ^ _lshr(x, 30)
    x = x * as_signed(int(_M1))
    x = x ^ _lshr(x, 27)
    x = x * as_signed(int(_M2))
    return x ^ _lshr(x, 31)


def umod_torch(x: torch.Tensor, rows: torch.Tensor | int, wrap: torch.Tensor | int) -> torch.Tensor:
    """``uint64(x) mod rows`` for ``int64`` ``x``; ``wrap`` must be ``2**64 mod rows``.

    For negative ``x`` the unsigned value is ``x + 2**64``, so the result is
    ``(floor_mod(x, rows) + wrap) mod rows``; all intermediates stay below ``2 * rows``.
    """
    r = x.remainder(rows)
    return (r + (x < 0).to(x.dtype) * wrap).remainder(rows)

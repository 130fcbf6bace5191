"""Item text -> fixed-width token id matrices for the text encoders (SESA, omni-modal).

A plain, fast word tokenizer with no vocabulary file: text is NFKC-normalised and case-folded,
split into Unicode word runs (any script), and each word is hashed into ``num_buckets - 1`` ids
(``1 .. num_buckets - 1``; 0 is padding). Hashing keeps the tokenizer stateless, so a word first
seen at serving time still maps to the id it would have had in training, and no vocabulary has
to travel with a bundle. A text longer than ``max_tokens`` words keeps its first ``max_tokens``.

    >>> tok = TextTokenizer(num_buckets=1000, max_tokens=4)
    >>> ids, lengths = tok.encode(["Jazz  Café", "", None])
    >>> tuple(ids.shape), lengths.tolist()
    ((3, 4), [2, 0, 0])
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from recsys.features.hashing import hash_values

PAD = 0
_WORD = re.compile(r"\w+", re.UNICODE)


def words(text: str | None) -> list[str]:
    """The normalised words of ``text`` (``None`` and empty text have none)."""
    if not text:
        return []
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


@dataclass(frozen=True)
class TextTokenizer:
    """Hashing word tokenizer.

    Args:
        num_buckets: token id space including the padding id 0 (``>= 2``).
        max_tokens: width ``T`` of the encoded matrix; longer texts are truncated.
        salt: hash salt, so two tokenizers can use independent id spaces.
    """

    num_buckets: int = 1 << 15
    max_tokens: int = 64
    salt: int = 0

    def __post_init__(self) -> None:
        if self.num_buckets < 2:
            raise ValueError(f"TextTokenizer: num_buckets must be >= 2, got {self.num_buckets}")
        if self.max_tokens < 1:
            raise ValueError(f"TextTokenizer: max_tokens must be >= 1, got {self.max_tokens}")

    def token_ids(self, text: str | None) -> np.ndarray:
        """``(n,)`` int64 ids of the first ``max_tokens`` words of ``text`` (never 0)."""
        found = words(text)[: self.max_tokens]
        if not found:
            return np.zeros(0, dtype=np.int64)
        hashed = hash_values(found, salt=self.salt)
        return (hashed % np.uint64(self.num_buckets - 1)).astype(np.int64) + 1

    def encode(self, texts: Sequence[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids ``(N, T)`` int64 (0-padded) and lengths ``(N,)`` int64 of ``N`` texts."""
        ids = np.zeros((len(texts), self.max_tokens), dtype=np.int64)
        lengths = np.zeros(len(texts), dtype=np.int64)
        for row, text in enumerate(texts):
            tokens = self.token_ids(text)
            ids[row, : len(tokens)] = tokens
            lengths[row] = len(tokens)
        return torch.from_numpy(ids), torch.from_numpy(lengths)

"""Raw ``items`` rows -> the tensors of the omni-modal encoder, one bad row never failing a batch.

``item_inputs(frame, cfg)`` reads the columns an ``items`` table may have (``item_id``,
``title``, ``text``, ``concepts``, ``creator``, ``image`` PNG bytes, ``audio`` float list) from a
pyarrow table or a pandas frame. A missing column, a null value or an empty list means the item
lacks that modality. A value that cannot be used (a PNG that does not decode, an audio vector of
the wrong length or with NaN) is a *per-row error*: the row takes the no-image / no-audio path
and ``OmniInputs.errors`` names the row, the item and the reason, e.g.::

    items.image row 17 (item 'i17'): cannot decode PNG: cannot identify image file

so a batch job embeds every other row and can report or quarantine the bad ones.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from recsys.features.hashing import hash_values, to_int64
from recsys.features.text_tokens import TextTokenizer
from recsys.omni.config import OmniConfig

# Tokens of the categorical modality: concepts (many per item) and the creator (one).
CATEGORICAL_FEATURES = ("concepts", "creator")


class MediaError(ValueError):
    """One unusable media value; the message names the column, row and item."""


@dataclass
class OmniInputs:
    """Encoder inputs of ``N`` items (CPU tensors).

    Attributes:
        item_ids: ``(N,)`` object array of item ids (str).
        text_ids: ``(N, T)`` int64 token ids of title + text (0 = padding).
        image: ``(N, 3, S, S)`` float32 in ``[0, 1]`` (zeros where absent).
        audio: ``(N, A)`` float32 (zeros where absent).
        concepts: ``(N, C)`` int64 raw hashes of the concepts, ``concept_lengths (N,)``.
        creator: ``(N,)`` int64 raw hash of the creator; ``creator_present (N,)`` bool.
        present: ``(N, 4)`` bool, which of text / image / audio / categorical each item has.
        errors: one message per unusable value (the row then lacks that modality).
    """

    item_ids: np.ndarray
    text_ids: torch.Tensor
    image: torch.Tensor
    audio: torch.Tensor
    concepts: torch.Tensor
    concept_lengths: torch.Tensor
    creator: torch.Tensor
    creator_present: torch.Tensor
    present: torch.Tensor
    errors: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.text_ids.shape[0])

    def take(self, rows: torch.Tensor | np.ndarray | Sequence[int]) -> OmniInputs:
        """The inputs of ``rows`` (``(n,)`` indices), in that order; errors are not carried."""
        idx = torch.as_tensor(np.asarray(rows), dtype=torch.int64)
        return OmniInputs(
            item_ids=self.item_ids[idx.numpy()],
            text_ids=self.text_ids[idx],
            image=self.image[idx],
            audio=self.audio[idx],
            concepts=self.concepts[idx],
            concept_lengths=self.concept_lengths[idx],
            creator=self.creator[idx],
            creator_present=self.creator_present[idx],
            present=self.present[idx],
        )


def decode_image(data: bytes, size: int) -> np.ndarray:
    """PNG (or any format PIL reads) bytes -> ``(3, size, size)`` float32 in ``[0, 1]``.

    Raises ``MediaError`` with PIL's reason when the bytes do not decode completely.
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # decode fully now: a truncated file fails here, not later
            rgb = img.convert("RGB")
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise MediaError(f"cannot decode PNG: {e}") from e
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / 255.0


def _column(frame: pa.Table | pd.DataFrame, name: str) -> list | None:
    if isinstance(frame, pa.Table):
        return frame.column(name).to_pylist() if name in frame.column_names else None
    if name not in frame.columns:
        return None
    return [None if _is_null(v) else v for v in frame[name].tolist()]


def _is_null(v: object) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))


def _as_list(value: object) -> list:
    """Concepts may be a list, a numpy array (pandas from Parquet) or one ``"a|b"`` string."""
    if value is None:
        return []
    if isinstance(value, str):
        return [v for v in value.split("|") if v]
    return [v for v in list(value) if v is not None and v != ""]


def _texts(frame: pa.Table | pd.DataFrame, n: int) -> list[str]:
    titles = _column(frame, "title") or [None] * n
    bodies = _column(frame, "text") or [None] * n
    return [" ".join(str(p) for p in (t, b) if p) for t, b in zip(titles, bodies, strict=True)]


def _images(values: list | None, ids: np.ndarray, size: int, errors: list[str]) -> tuple:
    n = len(ids)
    image = np.zeros((n, 3, size, size), dtype=np.float32)
    present = np.zeros(n, dtype=bool)
    for row, data in enumerate(values or []):
        if data is None or len(data) == 0:
            continue
        try:
            image[row] = decode_image(bytes(data), size)
            present[row] = True
        except MediaError as e:
            errors.append(f"items.image row {row} (item {ids[row]!r}): {e}")
    return image, present


def _audio(values: list | None, ids: np.ndarray, dim: int, errors: list[str]) -> tuple:
    n = len(ids)
    audio = np.zeros((n, dim), dtype=np.float32)
    present = np.zeros(n, dtype=bool)
    for row, value in enumerate(values or []):
        if value is None or len(value) == 0:
            continue
        vec = np.asarray(value, dtype=np.float32)
        if vec.shape != (dim,):
            errors.append(
                f"items.audio row {row} (item {ids[row]!r}): expected {dim} values, "
                f"got shape {vec.shape}"
            )
        elif not np.isfinite(vec).all():
            errors.append(f"items.audio row {row} (item {ids[row]!r}): non-finite values")
        else:
            audio[row], present[row] = vec, True
    return audio, present


def _concepts(values: list | None, n: int) -> tuple[np.ndarray, np.ndarray]:
    lists = [_as_list(v) for v in (values or [None] * n)]
    lengths = np.array([len(v) for v in lists], dtype=np.int64)
    out = np.zeros((n, max(int(lengths.max(initial=0)), 1)), dtype=np.int64)
    flat = [str(c) for row in lists for c in row]
    if flat:
        hashed = to_int64(hash_values(flat))
        out[np.repeat(np.arange(n), lengths), _positions(lengths)] = hashed
    return out, lengths


def _positions(lengths: np.ndarray) -> np.ndarray:
    """``[0..l0-1, 0..l1-1, ...]`` for row lengths ``l``."""
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.arange(int(lengths.sum())) - starts


def item_inputs(frame: pa.Table | pd.DataFrame, cfg: OmniConfig) -> OmniInputs:
    """Encoder inputs of every row of an ``items`` table (any subset of its columns)."""
    n = frame.num_rows if isinstance(frame, pa.Table) else len(frame)
    raw_ids = _column(frame, "item_id")
    ids = np.array([str(v) if v is not None else "" for v in (raw_ids or [""] * n)], dtype=object)
    errors: list[str] = []
    text_ids, text_len = TextTokenizer(cfg.text_buckets, cfg.text_max_tokens).encode(
        _texts(frame, n)
    )
    image, has_image = _images(_column(frame, "image"), ids, cfg.image_size, errors)
    audio, has_audio = _audio(_column(frame, "audio"), ids, cfg.audio_dim, errors)
    concepts, concept_len = _concepts(_column(frame, "concepts"), n)
    creators = _column(frame, "creator") or [None] * n
    creator_present = np.array([c is not None and str(c) != "" for c in creators], dtype=bool)
    creator = np.zeros(n, dtype=np.int64)
    if creator_present.any():
        creator[creator_present] = to_int64(
            hash_values([str(c) for c, p in zip(creators, creator_present, strict=True) if p])
        )
    has_cat = (concept_len > 0) | creator_present
    present = np.stack([text_len.numpy() > 0, has_image, has_audio, has_cat], axis=1)
    return OmniInputs(
        item_ids=ids,
        text_ids=text_ids,
        image=torch.from_numpy(image),
        audio=torch.from_numpy(audio),
        concepts=torch.from_numpy(concepts),
        concept_lengths=torch.from_numpy(concept_len),
        creator=torch.from_numpy(creator),
        creator_present=torch.from_numpy(creator_present),
        present=torch.from_numpy(present),
        errors=errors,
    )

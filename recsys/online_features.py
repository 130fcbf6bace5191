"""Online features: every user's and item's latest feature row, as the server reads it.

``spark_jobs/materialize_features.py`` (Feast's materialise pattern) computes them after
prepare, with prepare's own rules, as of one time ``as_of``: a user's ``history`` (last
``history_length`` positives strictly before ``as_of``, oldest first), declared ``concepts``
and raw attributes, and the prior-count dense features (``d_user_prior_*``, ``d_item_prior_*``)
exactly as an example row at ``as_of`` would hold them. A request that carries no user
features is then scored from these rows, so a served score equals the offline score of the
same example (``tests/integration/test_serving_online_features.py``).

Two stores hold one materialisation (a *version*, the job's release id):

- on disk, always: ``<output_dir>/online/features/{users,items}/`` (Parquet) and
  ``manifest.json``, published as one release (``spark_jobs/publication.py``);
- in Redis, when asked, in ``recsys.embedding_keys``' layout with JSON payloads::

      <namespace>:<version>:<kind>:<id>       -> JSON object of the row (sorted keys)
      <namespace>:<version>:_complete:<kind>  -> CompletionMarker (count, checksum; dim 0)
      <namespace>:_current                    -> the version to read, SET after both markers

Payloads are JSON, never pickles: a reader decodes data, it never runs it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

NAMESPACE = "recsys-features"
ONLINE_DIR = "online"  # under the pipeline's output_dir
FEATURES = "features"  # the release entry holding the tables and manifest
TABLES = {"user": "users", "item": "items"}
USER_DENSE = ("d_user_prior_events", "d_user_prior_positives")
ITEM_DENSE = ("d_item_prior_events", "d_item_prior_positives")


class OnlineFeatureError(ValueError):
    """An online feature row or pointer that cannot be used; the message names the key."""


def current_key(namespace: str) -> str:
    """The key holding the version readers use (written last by a materialisation)."""
    return f"{namespace}:_current"


def _plain(value: Any) -> Any:
    """A JSON-able Python value: numpy scalars/arrays unwrapped, NaN -> None."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def encode_row(row: Mapping[str, Any]) -> bytes:
    """One feature row -> compact JSON bytes (sorted keys, so equal rows are equal bytes)."""
    plain = {str(k): _plain(v) for k, v in row.items()}
    return json.dumps(plain, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def decode_row(raw: bytes | str, key: str) -> dict[str, Any]:
    """JSON bytes -> one feature row; ``OnlineFeatureError`` naming ``key`` otherwise."""
    try:
        row = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise OnlineFeatureError(f"{key}: not a JSON feature row ({e})") from None
    if not isinstance(row, dict):
        raise OnlineFeatureError(f"{key}: a feature row must be a JSON object")
    return row

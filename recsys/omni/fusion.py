"""``OmniModalEncoder``: modality tokens fused by a small transformer into one item vector."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import nn

from recsys.omni.config import MODALITIES, OmniConfig
from recsys.omni.encoders import build_encoders
from recsys.omni.item_media import OmniInputs, item_inputs

log = logging.getLogger(__name__)


class OmniModalEncoder(nn.Module):
    """Text, image, audio and categorical tokens -> one ``(N, D)`` item embedding.

    Each modality of ``cfg.modalities`` has an encoder (``recsys.omni.encoders``) giving one
    ``D``-wide token, plus a learned type embedding. A learned ``[CLS]`` token and the
    modality tokens go through a pre-norm ``TransformerEncoder`` (bidirectional attention);
    tokens of modalities an item lacks are masked out of attention, so any subset works,
    including none (the ``[CLS]`` token alone: a constant "no content" vector). The output is
    ``LayerNorm`` + linear of the ``[CLS]`` state, unnormalised: callers L2-normalise it or a
    Matryoshka prefix of it (``unit_prefix``).

    In training mode each present modality is dropped with probability
    ``cfg.modality_dropout`` (an item keeps at least one of its modalities); in eval mode
    nothing is dropped and the output is deterministic.

    Call:
        inputs: ``OmniInputs`` of ``N`` items.
        keep: optional ``(N, M)`` bool over ``cfg.modalities``: use only these modalities
            (``M = len(cfg.modalities)``); ``None`` = all the item has.

    Returns:
        ``(N, D)`` float32.

    Example::

        enc = OmniModalEncoder(OmniConfig()).eval()
        vecs = enc.embed_items(world.items_table())     # (I, 64) unit vectors
    """

    def __init__(self, cfg: OmniConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.modalities = list(cfg.modalities)
        self.columns = [MODALITIES.index(m) for m in self.modalities]
        d = cfg.dim
        self.encoders = build_encoders(cfg)
        self.type_embedding = nn.Parameter(torch.randn(len(self.modalities), d) * 0.02)
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d, cfg.fusion_heads, dim_feedforward=2 * d, dropout=0.0, batch_first=True,
            norm_first=True, activation="gelu",
        )  # fmt: skip
        self.fusion = nn.TransformerEncoder(layer, cfg.fusion_layers, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d))

    def present(self, inputs: OmniInputs) -> torch.Tensor:
        """``(N, M)`` bool: which of this encoder's modalities each item has."""
        return inputs.present[:, self.columns]

    def tokens(self, inputs: OmniInputs) -> torch.Tensor:
        """``(N, M, D)`` modality tokens (type embeddings added), present or not."""
        parts = [self.encoders[m](inputs) for m in self.modalities]
        return torch.stack(parts, dim=1) + self.type_embedding[None]

    def drop_modalities(self, present: torch.Tensor) -> torch.Tensor:
        """Random modality dropout: ``present (N, M)`` -> kept ``(N, M)``, at least one kept
        per row that had one."""
        p = self.cfg.modality_dropout
        if p <= 0:
            return present
        keep = present & (torch.rand(present.shape) >= p)
        emptied = present.any(1) & ~keep.any(1)
        if emptied.any():
            scores = torch.rand(present.shape).masked_fill(~present, -1.0)
            rescue = F.one_hot(scores.argmax(1), present.shape[1]).bool()
            keep = keep | (rescue & emptied[:, None])
        return keep

    def fuse(self, tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """``tokens (N, M, D)`` with ``keep (N, M)`` -> ``(N, D)`` (the [CLS] output)."""
        n = tokens.shape[0]
        seq = torch.cat([self.cls.expand(n, -1, -1), tokens], dim=1)
        pad = torch.cat([torch.zeros(n, 1, dtype=torch.bool), ~keep], dim=1)
        # a fully kept row needs no mask, and rows alike give results equal to one at a time
        hidden = self.fusion(seq, src_key_padding_mask=pad if pad.any() else None)
        return self.head(hidden[:, 0])

    def forward(self, inputs: OmniInputs, keep: torch.Tensor | None = None) -> torch.Tensor:
        present = self.present(inputs)
        keep = present if keep is None else keep & present
        if self.training:
            keep = self.drop_modalities(keep)
        return self.fuse(self.tokens(inputs), keep)

    @torch.no_grad()
    def encode(self, inputs: OmniInputs, batch_size: int = 1024) -> np.ndarray:
        """Eval-mode ``(N, D)`` float32 unit vectors of ``inputs``, in batches."""
        was = self.training
        self.eval()
        try:
            out = [
                F.normalize(
                    self(inputs.take(np.arange(s, min(s + batch_size, len(inputs))))), dim=-1
                )
                for s in range(0, len(inputs), batch_size)
            ]
        finally:
            self.train(was)
        if not out:
            return np.zeros((0, self.cfg.dim), dtype=np.float32)
        return torch.cat(out).numpy().astype(np.float32)

    def embed_items(self, frame: pa.Table | pd.DataFrame) -> np.ndarray:
        """``(N, D)`` unit vectors of the rows of a raw ``items`` table (see ``item_inputs``);
        rows with unusable media embed without them, and one warning names the first few."""
        inputs = item_inputs(frame, self.cfg)
        if inputs.errors:
            log.warning(
                "omni: %d unusable media value(s) embedded without them; first: %s",
                len(inputs.errors), "; ".join(inputs.errors[:3]),
            )  # fmt: skip
        return self.encode(inputs)

    def embed(self, kind: str, frame: pd.DataFrame | pa.Table) -> np.ndarray:
        """The bundle ``Embedder`` interface: only ``kind="item"`` is supported."""
        if kind != "item":
            raise ValueError(f"omni: embeds items only, got kind {kind!r}")
        return self.embed_items(frame)

    def kwargs(self) -> dict[str, Any]:
        """JSON arguments of :func:`omni_from_kwargs` that rebuild this module."""
        return {"omni": self.cfg.model_dump(mode="json")}


def omni_from_kwargs(omni: dict[str, Any]) -> OmniModalEncoder:
    """Bundle factory: rebuild an ``OmniModalEncoder`` from its ``kwargs()`` (weights apart)."""
    return OmniModalEncoder(OmniConfig.model_validate(omni))

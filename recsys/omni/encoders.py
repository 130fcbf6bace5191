"""One small encoder per modality; each maps ``OmniInputs`` to one ``(N, D)`` token per item.

The tokens of absent modalities are computed too (from zeros) and masked out by the fusion
transformer, so every encoder runs on fixed-shape batches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.embeddings.unified import UnifiedEmbedding, UnifiedEmbeddingConfig
from recsys.omni.config import OmniConfig
from recsys.omni.item_media import CATEGORICAL_FEATURES, OmniInputs


class TextEncoder(nn.Module):
    """Mean of hashed word embeddings (``TextTokenizer`` ids) -> MLP.

    Input: ``text_ids (N, T)`` int64, 0 = padding. Output: ``(N, D)``; a text with no words
    gives the MLP of a zero vector (and is masked out by the fusion).
    """

    def __init__(self, buckets: int, dim: int) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(buckets, dim, mode="mean", padding_idx=0)
        nn.init.normal_(self.bag.weight, std=0.1)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, inputs: OmniInputs) -> torch.Tensor:
        return self.mlp(self.bag(inputs.text_ids))


class ImageEncoder(nn.Module):
    """Three stride-2 convolutions, 2x2 average pooling, linear.

    Input: ``image (N, 3, S, S)`` in ``[0, 1]``. Output: ``(N, D)``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.GELU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )
        self.out = nn.Linear(32 * 4, dim)

    def forward(self, inputs: OmniInputs) -> torch.Tensor:
        return self.out(self.conv(inputs.image - 0.5))


class AudioEncoder(nn.Module):
    """MLP over the audio vector. Input: ``audio (N, A)``. Output: ``(N, D)``."""

    def __init__(self, audio_dim: int, dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.LayerNorm(audio_dim),
            nn.Linear(audio_dim, 2 * dim),
            nn.GELU(),
            nn.Linear(2 * dim, dim),
        )

    def forward(self, inputs: OmniInputs) -> torch.Tensor:
        return self.mlp(inputs.audio)


class CategoricalEncoder(nn.Module):
    """Concepts (mean-pooled) and creator through one unified embedding table, then linear.

    Input: raw hashes ``concepts (N, C)`` with ``concept_lengths (N,)`` and ``creator (N,)`` with
    ``creator_present (N,)``. Output: ``(N, D)``.
    """

    def __init__(self, rows: int, chunk: int, probes: int, dim: int) -> None:
        super().__init__()
        config = UnifiedEmbeddingConfig(
            {f: probes for f in CATEGORICAL_FEATURES}, rows_per_table=rows, dim=chunk, name="omni"
        )
        self.embedding = UnifiedEmbedding(config)
        self.out = nn.Linear(len(CATEGORICAL_FEATURES) * probes * chunk, dim)

    def forward(self, inputs: OmniInputs) -> torch.Tensor:
        n = len(inputs)
        width = inputs.concepts.shape[1]
        keep = torch.arange(width)[None, :] < inputs.concept_lengths[:, None]
        concept_values = inputs.concepts[keep]
        creator_lengths = inputs.creator_present.to(torch.int64)
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=list(CATEGORICAL_FEATURES),
            values=torch.cat([concept_values, inputs.creator[inputs.creator_present]]),
            lengths=torch.cat([inputs.concept_lengths, creator_lengths]).to(torch.int32),
        )
        values = self.embedding(kjt).values()
        assert values.shape[0] == n
        return self.out(values)


def build_encoders(cfg: OmniConfig) -> nn.ModuleDict:
    """The encoders of ``cfg.modalities``, keyed by modality name."""
    make = {
        "text": lambda: TextEncoder(cfg.text_buckets, cfg.dim),
        "image": lambda: ImageEncoder(cfg.dim),
        "audio": lambda: AudioEncoder(cfg.audio_dim, cfg.dim),
        "categorical": lambda: CategoricalEncoder(
            cfg.category_rows, cfg.category_dim, cfg.category_probes, cfg.dim
        ),
    }
    return nn.ModuleDict({m: make[m]() for m in cfg.modalities})


def unit_prefix(x: torch.Tensor, width: int) -> torch.Tensor:
    """The L2-normalised first ``width`` columns of ``x (N, D)``."""
    return F.normalize(x[:, :width], dim=-1)

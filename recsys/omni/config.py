"""``OmniConfig``: the ``omni:`` section of a pipeline config (modalities, sizes, stages, losses)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from recsys.config import NonNegativeFloat, PositiveFloat, PositiveInt, Section, Seed

Modality = Literal["text", "image", "audio", "categorical"]
MODALITIES: tuple[str, ...] = ("text", "image", "audio", "categorical")


class OmniConfig(Section):
    """Omni-modal item encoder and its two training stages.

    Every loss is switchable for ablations: stage 1 is the cross-modal contrastive loss
    (``item2item``); stage 2 adds ``seq2item`` and ``id2item`` and keeps ``item2item`` on
    unless it is switched off.
    """

    seed: Seed = 0
    # Modalities the encoder has a token for; an item lacking one simply has no token for it.
    modalities: list[Modality] = Field(default_factory=lambda: list(MODALITIES))
    dim: PositiveInt = 64  # output width D (and token width)
    # Matryoshka prefixes: every loss is applied to each L2-normalised prefix of these widths.
    matryoshka: list[PositiveInt] = Field(default_factory=lambda: [16, 32, 64])
    text_buckets: int = Field(default=1 << 15, ge=2)  # TextTokenizer id space
    text_max_tokens: PositiveInt = 48  # words of title + text kept
    category_rows: PositiveInt = 1 << 14  # unified embedding rows (concepts, creator)
    category_dim: PositiveInt = 16  # unified embedding chunk width
    category_probes: PositiveInt = 2  # chunks per categorical feature
    image_size: int = Field(default=32, ge=8, le=128)  # images are resized to this square
    audio_dim: PositiveInt = 32  # expected audio vector length; others are per-row errors
    fusion_layers: PositiveInt = 2
    fusion_heads: PositiveInt = 4
    # Training only: each present modality token is dropped with this probability (an item
    # always keeps at least one of the modalities it has).
    modality_dropout: float = Field(default=0.3, ge=0, lt=1)
    temperature: PositiveFloat = 0.07  # initial temperature; learnable (log scale)
    batch_size: PositiveInt = 256
    lr: PositiveFloat = 2e-3
    weight_decay: NonNegativeFloat = 1e-4
    stage1_epochs: PositiveInt = 30  # passes over the catalogue
    stage2_epochs: PositiveInt = 3  # passes over the (history, next item) pairs
    stage2: bool = True  # run stage 2 at all (False = content-only embeddings)
    seq2item: bool = True
    id2item: bool = True
    item2item: bool = True
    seq2item_weight: NonNegativeFloat = 1.0
    id2item_weight: NonNegativeFloat = 1.0
    item2item_weight: NonNegativeFloat = 0.5  # stage 2 only; stage 1 uses weight 1
    history_length: PositiveInt = 10  # last N history items whose mean is the query
    logq: bool = True  # subtract log item frequency from the sequence-to-item logits

    @model_validator(mode="after")
    def _check(self) -> OmniConfig:
        if not self.modalities:
            raise ValueError("omni.modalities: at least one modality is needed")
        if len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"omni.modalities: duplicates in {self.modalities}")
        bad = [m for m in self.matryoshka if m > self.dim]
        if bad:
            raise ValueError(f"omni.matryoshka: prefixes {bad} exceed omni.dim {self.dim}")
        if self.dim % self.fusion_heads:
            raise ValueError(
                f"omni.dim ({self.dim}) must be divisible by omni.fusion_heads "
                f"({self.fusion_heads})"
            )
        return self

    @property
    def prefixes(self) -> list[int]:
        """Matryoshka widths, ascending, always ending with the full width."""
        return sorted(set(self.matryoshka) | {self.dim})

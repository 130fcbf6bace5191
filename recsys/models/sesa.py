"""SESA: item text -> bi-GRU -> non-negative, top-k sparse activations over named concepts.

Supervised Explicit Semantic Analysis (Bogdanova & Yazdani 2017): an encoder maps text to a
latent vector, a projector maps it onto learned concept vectors (one per concept of the
vocabulary), and relevance is a dot product in that explicit space. Here::

    tokens (N, T) --TextTokenizer--> embeddings x (N, T, E) --bi-GRU--> h (N, 2H)
    z = h @ concept_vectors.T + max_t (x_t @ word_concept_vectors.T) + b
                                                      (N, C)  one logit per named concept
    p = sigmoid(z)                                    (N, C)  P(item has concept c)
    a = p on the k largest p that are >= floor * max_c p, else 0   (N, C)  <= k non-zeros
    user u = alpha * declared (C) + beta * mean(a of the user's history items)
    score(u, i) = sum_c w_c * u_c * a_ic + global + user_bias(u) + item_bias(i)

The second term is word evidence: each token's embedding scored against every concept, the
strongest token per concept kept (0 for a text without tokens). A concept named by one word of
a long text (a secondary genre, a tag) reaches the logit through it directly; the bi-GRU's last
states alone blur such single words, so concept prediction on items whose labels were never
seen stayed near the prior (MovieLens held-back P@5 0.27; simulated world: 52 % of the held-back
items' concept sets exactly right after 400 concept-loss-only steps, 86 % with word evidence).

``w_c >= 0`` is a learned per-concept weight, ``alpha, beta >= 0`` learned mixing weights,
``item_bias`` = a linear read-out of ``h`` (content, so cold items have one) plus a hashed
item-id bias; ``user_bias`` a hashed user-id bias. Every score is a sum of per-concept terms
``w_c * u_c * a_ic`` plus the biases, which is what ``recsys.concepts.space.explain`` returns.
The auxiliary multi-label concept loss reads ``z`` (``sigmoid(z_c)`` = the item has concept
``c``), so an activation is the model's probability that the item carries the concept: bounded,
non-negative, and comparable across items. The relative floor (``min_relative_activation``)
drops the weak tail of the top ``k`` (concepts far less likely than the item's strongest one),
so a user's strong interest in a concept the item barely touches cannot outweigh the item's
real concepts in a score or its explanation; the strongest concept is always kept, so no item
goes dead (ReLU activations did: the auxiliary loss, with mostly-0 targets, drove every logit
below zero and the relevance path lost its gradient).

``explicit=False`` gives the latent baseline with the same encoder (word evidence included):
``tanh(z)`` lives in ``D`` unnamed dimensions (dense, signed, bounded), a linear head
``D -> C`` predicts concepts for the same auxiliary loss and maps declared concepts into the
latent space; ``D`` is chosen so both variants have the same parameter count
(``latent_dim_for``). Checkpoints of the encoder without word evidence do not load (the
``word_project.weight`` key is missing): retrain them.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from recsys.concepts.data import item_text
from recsys.concepts.vocabulary import ConceptVocabulary
from recsys.features.hashing import hash_values
from recsys.features.text_tokens import TextTokenizer

USER_SALT, ITEM_SALT = 0x5E5A01, 0x5E5A02
_SOFTPLUS_ONE = math.log(math.e - 1.0)  # softplus(_SOFTPLUS_ONE) == 1


class EncodedText(NamedTuple):
    """``summary (N, 2H)``: the bi-GRU's last states; ``words (N, T', E)``: the token
    embeddings (``T'`` = the longest text of the batch); ``real (N, T')`` bool: not padding."""

    summary: torch.Tensor
    words: torch.Tensor
    real: torch.Tensor


class TextEncoder(nn.Module):
    """Token ids -> embeddings -> bi-GRU: the concatenated last hidden states of both
    directions, and the token embeddings themselves (for word evidence).

    Args:
        num_buckets: token id space (0 = padding).
        embed_dim: token embedding width ``E``.
        hidden: GRU hidden width ``H`` per direction.

    Call: ``tokens (N, T)`` int64, ``lengths (N,)`` int64 (0 allowed: an empty text reads
    as one padding token). Returns an ``EncodedText``, float32.
    """

    def __init__(self, num_buckets: int, embed_dim: int, hidden: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(num_buckets, embed_dim, padding_idx=0)
        nn.init.uniform_(self.embed.weight, -0.05, 0.05)
        with torch.no_grad():
            self.embed.weight[0].zero_()
        self.gru = nn.GRU(embed_dim, hidden, batch_first=True, bidirectional=True)
        self.out_dim = 2 * hidden

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> EncodedText:
        if tokens.shape[0] == 0:
            width = self.embed.embedding_dim
            return EncodedText(
                torch.zeros((0, self.out_dim)),
                torch.zeros((0, 1, width)),
                torch.zeros((0, 1), dtype=torch.bool),
            )
        lengths = lengths.clamp(min=1).cpu()
        width = int(lengths.max())
        ids = tokens[:, :width]
        words = self.embed(ids)
        packed = pack_padded_sequence(words, lengths, batch_first=True, enforce_sorted=False)
        _, last = self.gru(packed)  # (2, N, H), rows in input order
        return EncodedText(torch.cat([last[0], last[1]], dim=1), words, ids > 0)


def word_evidence(project: nn.Module, words: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Per row and dimension, the largest ``project`` score over the row's real tokens (0 for
    a row without any): ``words (N, T, E)``, ``real (N, T)`` bool -> ``(N, K)``. Padding is
    never projected (texts are much shorter than the batch's longest on MovieLens)."""
    scores = project(words[real])  # (M, K), M = real tokens of the batch, row-major
    rows = torch.arange(words.shape[0]).repeat_interleave(real.sum(1))
    out = torch.zeros((words.shape[0], scores.shape[1]), dtype=scores.dtype)
    index = rows[:, None].expand_as(scores)
    return out.scatter_reduce(0, index, scores, "amax", include_self=False)


class ItemEncoding(NamedTuple):
    """``vectors (N, K)``: the item's coordinates in the relevance space (``K = C`` concepts,
    top-k sparse and non-negative; or ``K = D`` latent dims); ``concept_logits (N, C)``;
    ``bias (N,)``: the content part of the item bias."""

    vectors: torch.Tensor
    concept_logits: torch.Tensor
    bias: torch.Tensor


def sparse_activations(z: torch.Tensor, k: int, floor: float = 0.0) -> torch.Tensor:
    """``sigmoid(z)`` kept on each row's ``k`` largest entries that are at least ``floor``
    times the row's largest, 0 elsewhere: ``(N, C) -> (N, C)``."""
    p = torch.sigmoid(z)
    keep = torch.zeros_like(p, dtype=torch.bool)
    keep.scatter_(1, torch.topk(z, min(k, z.shape[1]), dim=1).indices, True)
    if floor > 0:
        keep &= p >= floor * p.max(dim=1, keepdim=True).values
    return p * keep


def latent_dim_for(num_concepts: int, encoder_dim: int, embed_dim: int = 0) -> int:
    """Latent width ``D`` whose model has the parameter count of the explicit one:
    ``(encoder_dim + 1 + embed_dim)*D + D*C + C`` (projections of the summary and of the words,
    concept head) vs ``(encoder_dim + 1 + embed_dim)*C + C`` (the same projections to ``C``,
    per-concept weights)."""
    c, width = num_concepts, encoder_dim + 1 + embed_dim
    return max(1, round(width * c / (width + c)))


class SesaModel(nn.Module):
    """The SESA concept encoder and scorer (or, ``explicit=False``, the latent baseline).

    Args:
        num_concepts: vocabulary size ``C``.
        explicit: SESA (named, sparse, non-negative dimensions) or the latent baseline.
        top_k: non-zero activations kept per item (explicit only).
        min_relative_activation: the floor, relative to the item's strongest activation, below
            which a top-k activation is dropped (0 = plain top-k).
        num_buckets, max_tokens: the ``TextTokenizer``.
        embed_dim, hidden: the ``TextEncoder``.
        id_buckets: hash buckets of the user- and item-id biases.
        latent_dim: ``D`` of the latent variant (default ``latent_dim_for``).

    Example::

        model = SesaModel(48, top_k=10)
        tokens, lengths = model.tokenizer.encode(["jazz trumpet night"])
        enc = model.encode(tokens, lengths)          # enc.vectors: (1, 48), <= 10 non-zeros
    """

    def __init__(
        self,
        num_concepts: int,
        *,
        explicit: bool = True,
        top_k: int = 10,
        min_relative_activation: float = 0.0,
        num_buckets: int = 1 << 14,
        max_tokens: int = 64,
        embed_dim: int = 32,
        hidden: int = 32,
        id_buckets: int = 1 << 16,
        latent_dim: int | None = None,
    ) -> None:
        super().__init__()
        if num_concepts < 1:
            raise ValueError("SesaModel: the concept vocabulary is empty (num_concepts < 1)")
        self.num_concepts, self.explicit, self.top_k = num_concepts, explicit, top_k
        self.floor = min_relative_activation
        self.tokenizer = TextTokenizer(num_buckets=num_buckets, max_tokens=max_tokens)
        self.encoder = TextEncoder(num_buckets, embed_dim, hidden)
        h = self.encoder.out_dim
        if explicit:
            self.dim = num_concepts
            self.concept_weight = nn.Parameter(torch.full((num_concepts,), _SOFTPLUS_ONE))
            self.concept_head = None
        else:
            self.dim = latent_dim or latent_dim_for(num_concepts, h, embed_dim)
            self.concept_weight = None
            self.concept_head = nn.Linear(self.dim, num_concepts)
        self.project = nn.Linear(h, self.dim)  # rows: the learned concept vectors
        self.word_project = nn.Linear(embed_dim, self.dim, bias=False)  # word evidence
        self.content_bias = nn.Linear(h, 1)
        self.id_buckets = id_buckets
        self.item_id_bias = nn.Embedding(id_buckets, 1)
        self.user_id_bias = nn.Embedding(id_buckets, 1)
        nn.init.zeros_(self.item_id_bias.weight)
        nn.init.zeros_(self.user_id_bias.weight)
        self.global_bias = nn.Parameter(torch.zeros(()))
        self.mix = nn.Parameter(torch.full((2,), _SOFTPLUS_ONE))  # softplus -> (alpha, beta)

    # ---- items -------------------------------------------------------------------------

    def encode(self, tokens: torch.Tensor, lengths: torch.Tensor) -> ItemEncoding:
        """Encode ``N`` token rows (``(N, T)``, ``(N,)``) into the relevance space."""
        text = self.encoder(tokens, lengths)
        z = self.project(text.summary) + word_evidence(self.word_project, text.words, text.real)
        bias = self.content_bias(text.summary).squeeze(-1)
        if self.explicit:
            return ItemEncoding(sparse_activations(z, self.top_k, self.floor), z, bias)
        latent = torch.tanh(z)  # bounded like SESA's probabilities; unbounded dims trained worse
        return ItemEncoding(latent, self.concept_head(latent), bias)

    @torch.no_grad()
    def encode_texts(
        self, texts: list[str], chunk: int = 1024
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(vectors (N, K), content bias (N,), concept logits (N, C))``, float32, of raw
        texts, encoded in chunks of ``chunk`` rows."""
        parts: list[tuple[np.ndarray, ...]] = []
        for start in range(0, len(texts), chunk):
            tokens, lengths = self.tokenizer.encode(texts[start : start + chunk])
            enc = self.encode(tokens, lengths)
            parts.append(tuple(t.numpy().astype(np.float32) for t in enc))
        if not parts:
            empty = np.zeros((0, self.dim), np.float32)
            return empty, np.zeros(0, np.float32), np.zeros((0, self.num_concepts), np.float32)
        vectors, logits, bias = (np.concatenate(p) for p in zip(*parts, strict=True))
        return vectors, bias, logits

    # ---- users and scores --------------------------------------------------------------

    def mixing(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(alpha, beta)``: weights of the declared and the history parts of a user."""
        alpha, beta = F.softplus(self.mix)
        return alpha, beta

    def weights(self) -> torch.Tensor:
        """``(K,)`` non-negative per-dimension weights ``w`` of the score (1 for latent)."""
        if self.concept_weight is None:
            return torch.ones(self.dim)
        return F.softplus(self.concept_weight)

    def declared_vectors(self, declared: torch.Tensor) -> torch.Tensor:
        """Declared concepts ``(B, C)`` (weights summing to 1) in the relevance space ``(B, K)``."""
        if self.concept_head is None:
            return declared
        return declared @ self.concept_head.weight

    def user_vectors(self, declared: torch.Tensor, history_mean: torch.Tensor) -> torch.Tensor:
        """``(B, K)``: ``alpha * declared + beta * mean of the history items' vectors``."""
        alpha, beta = self.mixing()
        return alpha * self.declared_vectors(declared) + beta * history_mean

    def id_buckets_of(self, kind: str, ids: np.ndarray | list[str]) -> torch.Tensor:
        """``(N,)`` int64 bias buckets of user or item ids (salted hash)."""
        if len(ids) == 0:
            return torch.zeros(0, dtype=torch.int64)
        salt = USER_SALT if kind == "user" else ITEM_SALT
        buckets = hash_values(np.asarray(ids, dtype=object), salt=salt) % np.uint64(self.id_buckets)
        return torch.from_numpy(buckets.astype(np.int64))

    def id_bias(self, kind: str, buckets: torch.Tensor) -> torch.Tensor:
        """``(N,)`` the learned biases of ``id_buckets_of(kind, ids)``."""
        table = self.user_id_bias if kind == "user" else self.item_id_bias
        return table(buckets).squeeze(-1)

    def pair_scores(
        self,
        user: torch.Tensor,
        item: torch.Tensor,
        user_bias: torch.Tensor,
        item_bias: torch.Tensor,
    ) -> torch.Tensor:
        """``(B,)`` scores of aligned users ``(B, K)`` and items ``(B, K)`` with their biases."""
        return (user * self.weights() * item).sum(-1) + self.global_bias + user_bias + item_bias

    # ---- batch embedding (recsys.bundle.Embedder) ---------------------------------------

    def embed(self, kind: str, frame: pd.DataFrame | pa.Table) -> np.ndarray:
        """Rows of a raw ``items`` table -> ``(N, K)`` item vectors (SESA: sparse concept
        activations); rows of a raw ``users`` table -> ``(N, K)`` declared-concept part of the
        user vector (``alpha * declared``; histories live in the bundle's item vectors).
        Concept names are read with the vocabulary set by ``attach_vocabulary``."""
        if isinstance(frame, pa.Table):
            frame = frame.to_pandas()
        n = len(frame)
        if kind == "item":
            titles = frame["title"] if "title" in frame else [None] * n
            texts = frame["text"] if "text" in frame else [None] * n
            return self.encode_texts([item_text(t, x) for t, x in zip(titles, texts, strict=True)])[
                0
            ]
        if kind == "user":
            vocab = getattr(self, "vocabulary", None)
            if vocab is None:
                raise ValueError("SesaModel.embed('user'): no concept vocabulary attached")
            declared = np.zeros((n, self.num_concepts), np.float32)
            lists = frame["concepts"] if "concepts" in frame else [[]] * n
            for row, names in enumerate(lists):
                ids = vocab.ids_of(list(names) if names is not None else [])
                if ids:
                    declared[row, ids] = 1.0 / len(ids)
            with torch.no_grad():
                alpha, _ = self.mixing()
                return (alpha * self.declared_vectors(torch.from_numpy(declared))).numpy()
        raise ValueError(f"embed: kind must be 'user' or 'item', got {kind!r}")

    def attach_vocabulary(self, vocab: ConceptVocabulary) -> None:
        """The vocabulary ``embed('user', ...)`` maps declared concept names with."""
        if len(vocab) != self.num_concepts:
            raise ValueError(f"vocabulary has {len(vocab)} concepts, the model {self.num_concepts}")
        self.vocabulary = vocab

    def kwargs(self) -> dict[str, Any]:
        """JSON arguments of :func:`sesa_from_kwargs` that rebuild this module."""
        return {
            "num_concepts": self.num_concepts,
            "explicit": self.explicit,
            "top_k": self.top_k,
            "min_relative_activation": self.floor,
            "num_buckets": self.tokenizer.num_buckets,
            "max_tokens": self.tokenizer.max_tokens,
            "embed_dim": self.encoder.embed.embedding_dim,
            "hidden": self.encoder.gru.hidden_size,
            "id_buckets": self.id_buckets,
            "latent_dim": None if self.explicit else self.dim,
        }


def sesa_from_kwargs(**kwargs: Any) -> SesaModel:
    """Bundle factory: rebuild a ``SesaModel`` from the JSON stored in ``bundle.json``.

    A ``vocabulary`` entry (``ConceptVocabulary.to_dict()``) is attached for ``embed('user')``.
    """
    vocab = kwargs.pop("vocabulary", None)
    model = SesaModel(**kwargs)
    if vocab is not None:
        model.attach_vocabulary(ConceptVocabulary.from_dict(vocab))
    return model


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

"""ESA baseline (Gabrilovich & Markovitch 2007): TF-IDF word -> concept weights, cosine.

Each concept's document is the text of every item labelled with it (items whose labels are
held back excluded). ``TfidfVectorizer`` (scikit-learn; words as ``recsys.features.text_tokens``
splits them) is fitted on those ``C`` documents; a text's concept vector is its TF-IDF vector
times the concept-document matrix (``(V,) @ (V, C)``), kept to its ``top_k`` largest entries.
Users: declared concepts plus the mean concept vector of their history items; relevance: the
cosine of user and item vectors. Unsupervised, no biases, same ``ConceptSpace`` interface.
"""

from __future__ import annotations

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

from recsys.concepts.space import ConceptSpace
from recsys.features.text_tokens import words


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """``scores`` with all but each row's ``k`` largest (positive) entries set to 0."""
    out = np.zeros_like(scores)
    if scores.size == 0:
        return out
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    rows = np.arange(len(scores))[:, None]
    out[rows, top] = scores[rows, top]
    return np.maximum(out, 0.0)


def build_esa(data, top_k: int = 10, history_length: int = 20) -> ConceptSpace:  # noqa: ANN001
    """The ESA ``ConceptSpace`` of ``data`` (a ``recsys.concepts.train.ConceptData``)."""
    c = len(data.vocab)
    docs: list[list[str]] = [[] for _ in range(c)]
    for pos, concept_ids in enumerate(data.items.concepts):
        if data.holdout[pos]:
            continue
        for cid in concept_ids:
            docs[cid].append(data.items.texts[pos])
    vectorizer = TfidfVectorizer(analyzer=words, sublinear_tf=True)
    concept_docs = vectorizer.fit_transform([" ".join(d) for d in docs])  # (C, V), unit rows

    def encode(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        scores = (vectorizer.transform(list(texts)) @ concept_docs.T).toarray().astype(np.float32)
        return _top_k(scores, top_k), np.zeros(len(texts), np.float32)

    scores = (vectorizer.transform(data.items.texts) @ concept_docs.T).toarray().astype(np.float32)
    eye = np.eye(c, dtype=np.float32)
    return ConceptSpace(
        name="esa",
        vocabulary=data.vocab,
        explicit=True,
        item_ids=data.items.ids,
        item_vectors=_top_k(scores, top_k),
        item_bias=np.zeros(len(data.items), np.float32),
        user_ids=data.users.ids,
        user_declared=data.users.declared_matrix(c),
        user_bias=np.zeros(len(data.users.ids), np.float32),
        beta=1.0,
        weights=np.ones(c, np.float32),
        global_bias=0.0,
        declared_map=eye,
        history_length=history_length,
        cosine=True,
        concept_scores=scores,
        encoder=encode,
    )

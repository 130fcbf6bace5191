"""SesaModel: odd item text, top-k sparsity, word evidence, the latent twin's parameter count,
rebuild."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys.models.sesa import (
    SesaModel,
    latent_dim_for,
    parameter_count,
    sesa_from_kwargs,
    word_evidence,
)

ODD_TEXTS = {
    "empty": "",
    "non_ascii": "Café Ñandú 東京 — ☕ crème brûlée Москва",
    "ten_thousand_tokens": " ".join(f"word{n % 997}" for n in range(10_000)),
    "only_unknown_words": "zzqx vlorp grindlewick",
}


def _model(**kw: object) -> SesaModel:
    torch.manual_seed(0)
    return SesaModel(12, top_k=3, embed_dim=8, hidden=8, num_buckets=512, max_tokens=16, **kw)


def test_odd_texts_get_non_negative_vectors_with_at_most_k_concepts() -> None:
    model = _model()
    vectors, bias, logits = model.encode_texts(list(ODD_TEXTS.values()))
    assert vectors.shape == (len(ODD_TEXTS), 12) and bias.shape == (len(ODD_TEXTS),)
    assert np.isfinite(vectors).all() and np.isfinite(bias).all() and np.isfinite(logits).all()
    assert (vectors >= 0).all()
    assert ((vectors > 0).sum(1) <= 3).all()


def test_a_ten_thousand_token_text_reads_as_its_first_max_tokens_words() -> None:
    model = _model()
    long = ODD_TEXTS["ten_thousand_tokens"]
    first = " ".join(long.split()[:16])
    v_long, b_long, _ = model.encode_texts([long])
    v_first, b_first, _ = model.encode_texts([first])
    np.testing.assert_array_equal(v_long, v_first)
    np.testing.assert_array_equal(b_long, b_first)


def test_empty_and_missing_text_encode_alike_and_differ_from_real_text() -> None:
    model = _model()
    vectors, _, logits = model.encode_texts(["", None, "jazz trumpet"])  # type: ignore[list-item]
    np.testing.assert_array_equal(logits[0], logits[1])
    assert not np.array_equal(logits[0], logits[2])


def test_activations_are_the_concept_probabilities_of_the_k_largest_logits() -> None:
    model = _model()
    texts = [f"text number {n} with words {n * 7} and {n * 13}" for n in range(50)]
    vectors, _, logits = model.encode_texts(texts)
    for v, z in zip(vectors, logits, strict=True):
        top = np.argsort(-z)[:3]
        expected = np.zeros_like(z)
        expected[top] = 1 / (1 + np.exp(-z[top]))
        np.testing.assert_allclose(v, expected, rtol=1e-5, atol=1e-7)
        assert (v > 0).sum() == 3


def test_the_relative_floor_drops_weak_top_k_concepts_but_never_the_strongest() -> None:
    model = _model(min_relative_activation=0.9)
    texts = [f"another text {n} about {n * 3}" for n in range(50)]
    vectors, _, logits = model.encode_texts(texts)
    probabilities = 1 / (1 + np.exp(-logits))
    for v, p in zip(vectors, probabilities, strict=True):
        assert v[np.argmax(p)] == pytest.approx(p.max())
        kept = v > 0
        assert 1 <= kept.sum() <= 3
        assert (p[kept] >= 0.9 * p.max() - 1e-6).all()


def test_latent_twin_has_the_parameter_count_of_sesa_up_to_rounding_its_width() -> None:
    for concepts in (12, 48, 528):
        sesa = SesaModel(concepts, embed_dim=8, hidden=8, num_buckets=512, id_buckets=64)
        latent = SesaModel(
            concepts, explicit=False, embed_dim=8, hidden=8, num_buckets=512, id_buckets=64
        )
        assert latent.dim == latent_dim_for(concepts, 16, 8) < concepts
        # one latent dimension costs 16 + 1 + 8 + C parameters: equal up to half of that
        assert abs(parameter_count(latent) - parameter_count(sesa)) <= (16 + 1 + 8 + concepts) / 2


def test_latent_vectors_are_dense_and_signed() -> None:
    model = _model(explicit=False)
    vectors, _, logits = model.encode_texts(["jazz trumpet night", "recipe kitchen"])
    assert vectors.shape[1] == model.dim and logits.shape[1] == 12
    assert (vectors < 0).any() and (vectors != 0).all()


def test_kwargs_rebuild_a_model_that_encodes_identically() -> None:
    model = _model()
    rebuilt = sesa_from_kwargs(**model.kwargs())
    rebuilt.load_state_dict(model.state_dict())
    texts = list(ODD_TEXTS.values())
    for a, b in zip(model.encode_texts(texts), rebuilt.encode_texts(texts), strict=True):
        np.testing.assert_array_equal(a, b)


def test_word_evidence_is_the_best_real_token_per_dimension_and_zero_without_tokens() -> None:
    project = torch.nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        project.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
    words = torch.tensor(
        [
            [[2.0, -1.0], [-3.0, 5.0], [9.0, 9.0]],  # third token is padding
            [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]],  # no real token
            [[-1.0, -2.0], [0.0, 0.0], [0.0, 0.0]],  # one real token, negative scores
        ]
    )
    real = torch.tensor([[True, True, False], [False, False, False], [True, False, False]])
    got = word_evidence(project, words.requires_grad_(), real)
    expected = torch.tensor([[2.0, 5.0, -1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, 3.0]])
    torch.testing.assert_close(got, expected)
    got.sum().backward()
    assert words.grad is not None and (words.grad[:, 2] == 0).all()  # padding gets no gradient
    assert (words.grad[1] == 0).all()


def test_one_concept_word_reaches_the_logits_wherever_it_stands_in_a_long_text() -> None:
    model = _model()
    with torch.no_grad():  # logits = word evidence + bias only
        model.project.weight.zero_()
    filler = " ".join(f"filler{n}" for n in range(14))
    _, _, logits = model.encode_texts([filler, f"jazz {filler}", f"{filler} jazz"])
    np.testing.assert_array_equal(logits[1], logits[2])  # position does not matter
    with torch.no_grad():
        tokens, _ = model.tokenizer.encode(["jazz"])
        jazz = model.word_project(model.encoder.embed(tokens[:, :1]))[0, 0].numpy()
    wins = jazz + model.project.bias.detach().numpy() > logits[0]
    assert wins.any() and (~wins).any()
    np.testing.assert_allclose(logits[1][wins], (jazz + model.project.bias.detach().numpy())[wins])
    np.testing.assert_array_equal(logits[1][~wins], logits[0][~wins])

import doctest

import pytest

import recsys.features.text_tokens as text_tokens
from recsys.features.text_tokens import TextTokenizer, words


def test_doctest_holds() -> None:
    assert doctest.testmod(text_tokens).failed == 0


def test_words_fold_case_and_width_and_keep_other_scripts() -> None:
    assert words("Jazz ＣＡＦÉ\t東京-night") == ["jazz", "café", "東京", "night"]
    assert words(None) == [] and words("  ...  ") == []


def test_same_word_same_id_in_any_text_and_never_padding() -> None:
    tok = TextTokenizer(num_buckets=50, max_tokens=8)
    a = tok.token_ids("swing bebop")
    b = tok.token_ids("BEBOP trumpet swing")
    assert a[0] == b[2] and a[1] == b[0]
    assert (tok.token_ids(" ".join(f"w{i}" for i in range(100))[:400]) >= 1).all()


def test_long_text_is_truncated_and_padding_fills_short_rows() -> None:
    tok = TextTokenizer(num_buckets=1000, max_tokens=5)
    ids, lengths = tok.encode([" ".join(["x"] * 10_000), "a b", ""])
    assert lengths.tolist() == [5, 2, 0]
    assert ids[1, 2:].tolist() == [0, 0, 0] and (ids[1, :2] > 0).all()
    assert ids[2].tolist() == [0] * 5


def test_bad_sizes_name_the_argument() -> None:
    with pytest.raises(ValueError, match="num_buckets"):
        TextTokenizer(num_buckets=1)
    with pytest.raises(ValueError, match="max_tokens"):
        TextTokenizer(max_tokens=0)

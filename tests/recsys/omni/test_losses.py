from __future__ import annotations

import torch
import torch.nn.functional as F

from recsys.omni.losses import (
    LogitScale,
    info_nce,
    matryoshka_info_nce,
    mean_history,
    modality_pair_loss,
    seq2item_loss,
)


def _unit(*shape: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape), dim=-1)


def test_info_nce_is_low_for_aligned_pairs_and_high_for_shuffled_ones() -> None:
    torch.manual_seed(0)
    a = _unit(32, 16)
    scale = torch.tensor(20.0)
    aligned = info_nce(a, a, scale)
    shuffled = info_nce(a, a[torch.randperm(32)], scale)
    assert aligned < 0.1 < shuffled


def test_a_row_holding_the_same_item_is_not_a_negative() -> None:
    torch.manual_seed(0)
    a = _unit(4, 8)
    key = a.clone()
    key[1] = key[0]  # rows 0 and 1 are the same item
    scale = torch.tensor(10.0)
    masked = info_nce(a, key, scale, ids=torch.tensor([7, 7, 8, 9]), symmetric=False)
    unmasked = info_nce(a, key, scale, symmetric=False)
    assert masked < unmasked


def test_log_q_correction_subtracts_each_keys_log_frequency_from_its_column() -> None:
    torch.manual_seed(0)
    q, k = _unit(8, 8), _unit(8, 8)
    scale = torch.tensor(5.0)
    log_q = torch.log(torch.softmax(torch.randn(8), 0))
    expected = F.cross_entropy(scale * q @ k.T - log_q[None, :], torch.arange(8))
    torch.testing.assert_close(info_nce(q, k, scale, log_q=log_q, symmetric=False), expected)
    assert not torch.isclose(expected, info_nce(q, k, scale, symmetric=False))


def test_matryoshka_applies_the_loss_to_each_prefix() -> None:
    torch.manual_seed(0)
    a = torch.randn(16, 8)
    b = a.clone()
    b[:, 4:] = torch.randn(16, 4)  # only the first 4 columns agree
    scale = torch.tensor(10.0)
    short = matryoshka_info_nce(a, b, scale, [4])
    full = matryoshka_info_nce(a, b, scale, [8])
    both = matryoshka_info_nce(a, b, scale, [4, 8])
    assert short < full
    torch.testing.assert_close(both, (short + full) / 2)


def test_modality_pair_loss_uses_only_rows_that_have_both_views() -> None:
    torch.manual_seed(0)
    views = torch.randn(3, 10, 8)
    views[1, 5:] = torch.randn(5, 8) * 100  # garbage where view 1 is absent
    valid = torch.ones(3, 10, dtype=torch.bool)
    valid[1, 5:] = False
    scale = torch.tensor(5.0)
    loss = modality_pair_loss(views, valid, scale, [8])
    clean = views.clone()
    clean[1, 5:] = torch.randn(5, 8)
    torch.testing.assert_close(loss, modality_pair_loss(clean, valid, scale, [8]))


def test_mean_history_ignores_padding_and_an_empty_history_gives_zeros() -> None:
    items = torch.eye(4)
    history = torch.tensor([[0, 1, -1], [-1, -1, -1]])
    q = mean_history(items, history, 4)
    torch.testing.assert_close(q[0], F.normalize(torch.tensor([1.0, 1.0, 0, 0]), dim=0))
    assert torch.equal(q[1], torch.zeros(4))


def test_seq2item_loss_prefers_the_true_next_item() -> None:
    items = torch.eye(6)
    history = torch.tensor([[0, -1], [2, -1], [4, -1]])
    right = seq2item_loss(items, history, torch.tensor([0, 2, 4]), torch.tensor(10.0), [6],
                          None, torch.tensor([0, 2, 4]))  # fmt: skip
    wrong = seq2item_loss(items, history, torch.tensor([2, 4, 0]), torch.tensor(10.0), [6],
                          None, torch.tensor([2, 4, 0]))  # fmt: skip
    assert right < wrong


def test_logit_scale_is_learnable_and_clamped() -> None:
    scale = LogitScale(0.07)
    assert abs(float(scale()) - 1 / 0.07) < 1e-3
    assert scale.log_scale.requires_grad
    with torch.no_grad():
        scale.log_scale.fill_(10.0)
    assert float(scale()) <= 100.0 + 1e-3

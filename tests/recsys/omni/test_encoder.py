from __future__ import annotations

import io
import itertools

import numpy as np
import pyarrow as pa
import pytest
import torch

from recsys.omni.config import MODALITIES, OmniConfig
from recsys.omni.fusion import OmniModalEncoder, omni_from_kwargs
from recsys.omni.item_media import item_inputs

COLUMN_OF = {"text": ["title", "text"], "image": ["image"], "audio": ["audio"],
             "categorical": ["concepts", "creator"]}  # fmt: skip


def _without(items: pa.Table, modalities: set[str]) -> pa.Table:
    """``items`` with the columns of ``modalities`` nulled out."""
    for m in modalities:
        for col in COLUMN_OF[m]:
            i = items.schema.get_field_index(col)
            items = items.set_column(i, col, pa.nulls(items.num_rows, items.schema.field(col).type))
    return items


@pytest.mark.parametrize(
    "subset",
    [s for r in range(0, 5) for s in itertools.combinations(MODALITIES, r)],
    ids=lambda s: "+".join(s) or "none",
)
def test_every_modality_subset_embeds_to_unit_vectors(
    items: pa.Table, encoder: OmniModalEncoder, subset: tuple[str, ...]
) -> None:
    only = _without(items, set(MODALITIES) - set(subset))
    inputs = item_inputs(only, encoder.cfg)
    assert inputs.present.sum(0).tolist() == [40 if m in subset else 0 for m in MODALITIES]
    vecs = encoder.embed_items(only)
    assert vecs.shape == (40, 16)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-5)
    if subset:  # content differs per item, so vectors do too
        assert np.unique(vecs.round(5), axis=0).shape[0] > 1


def test_each_modality_changes_the_embedding(items: pa.Table, encoder: OmniModalEncoder) -> None:
    full = encoder.embed_items(items)
    for m in MODALITIES:
        assert not np.allclose(encoder.embed_items(_without(items, {m})), full, atol=1e-4), m


def test_a_text_and_categorical_encoder_embeds_a_table_without_media_columns(
    items: pa.Table, small_cfg: OmniConfig
) -> None:
    cfg = small_cfg.model_copy(update={"modalities": ["text", "categorical"]})
    model = OmniModalEncoder(cfg).eval()
    no_media = items.drop_columns(["image", "audio"])
    np.testing.assert_allclose(model.embed_items(no_media), model.embed_items(items), atol=1e-6)


def test_modality_dropout_is_off_in_eval_mode_and_on_in_training(
    items: pa.Table, small_cfg: OmniConfig
) -> None:
    torch.manual_seed(0)
    model = OmniModalEncoder(small_cfg.model_copy(update={"modality_dropout": 0.9}))
    inputs = item_inputs(items, model.cfg)
    with torch.no_grad():
        model.train()
        train_a, train_b = model(inputs), model(inputs)
        model.eval()
        eval_a = model(inputs)
        full = model.fuse(model.tokens(inputs), model.present(inputs))
    assert not torch.allclose(train_a, train_b)
    torch.testing.assert_close(eval_a, full)


def test_dropout_keeps_at_least_one_present_modality_per_item(small_cfg: OmniConfig) -> None:
    encoder = OmniModalEncoder(small_cfg.model_copy(update={"modality_dropout": 0.99}))
    present = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0]], dtype=torch.bool)
    torch.manual_seed(1)
    for _ in range(50):
        keep = encoder.drop_modalities(present)
        assert not (keep & ~present).any()
        assert keep[:2].any(1).all() and not keep[2].any()


def test_eval_embeddings_are_deterministic_and_survive_a_state_dict_round_trip(
    items: pa.Table, encoder: OmniModalEncoder
) -> None:
    first = encoder.embed_items(items)
    np.testing.assert_array_equal(encoder.embed_items(items), first)
    rebuilt = omni_from_kwargs(**encoder.kwargs())
    buf = io.BytesIO()
    torch.save(encoder.state_dict(), buf)
    buf.seek(0)
    rebuilt.load_state_dict(torch.load(buf, weights_only=True))
    np.testing.assert_array_equal(rebuilt.eval().embed_items(items), first)


def test_a_batch_of_items_embeds_the_same_as_one_item_at_a_time(
    items: pa.Table, encoder: OmniModalEncoder
) -> None:
    # mixed presence: some rows lack image, audio or text
    mixed = items.set_column(
        items.schema.get_field_index("image"),
        "image",
        pa.array([None if i % 3 == 0 else v for i, v in enumerate(items["image"].to_pylist())],
                 pa.binary()),
    )  # fmt: skip
    mixed = mixed.set_column(
        mixed.schema.get_field_index("audio"),
        "audio",
        pa.array([None if i % 4 == 1 else v for i, v in enumerate(mixed["audio"].to_pylist())],
                 mixed.schema.field("audio").type),
    )  # fmt: skip
    batch = encoder.embed_items(mixed)
    one_by_one = np.concatenate([encoder.embed_items(mixed.slice(i, 1)) for i in range(12)])
    np.testing.assert_allclose(one_by_one, batch[:12], atol=1e-5)


def test_config_refuses_prefixes_wider_than_the_embedding() -> None:
    with pytest.raises(ValueError, match="matryoshka"):
        OmniConfig(dim=32, matryoshka=[16, 64])
    assert OmniConfig(dim=64, matryoshka=[32, 16]).prefixes == [16, 32, 64]

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from recsys.omni.config import OmniConfig
from recsys.omni.fusion import OmniModalEncoder
from recsys.omni.item_media import decode_image, item_inputs


def _with_images(items: pa.Table, images: list[bytes | None]) -> pa.Table:
    return items.set_column(
        items.schema.get_field_index("image"), "image", pa.array(images, pa.binary())
    )


def test_a_corrupt_truncated_or_missing_image_takes_the_no_image_path_with_a_row_error(
    items: pa.Table, encoder: OmniModalEncoder, caplog: pytest.LogCaptureFixture
) -> None:
    images = items["image"].to_pylist()
    good = images[3]
    broken = list(images)
    broken[0] = b"not a png at all"
    broken[1] = good[: len(good) // 2]  # truncated mid-stream
    broken[2] = None
    broken_items = _with_images(items, broken)
    inputs = item_inputs(broken_items, encoder.cfg)
    assert inputs.present[:3, 1].tolist() == [False, False, False]
    assert inputs.present[3:, 1].all()
    assert len(inputs.errors) == 2
    assert inputs.errors[0].startswith("items.image row 0 (item 'i0'): cannot decode PNG")
    assert inputs.errors[1].startswith("items.image row 1 (item 'i1'): cannot decode PNG")
    # the whole batch embeds; a broken row embeds exactly like the same item with no image
    vecs = encoder.embed_items(broken_items)
    assert "2 unusable media value(s)" in caplog.text and "row 0 (item 'i0')" in caplog.text
    no_image = encoder.embed_items(_with_images(items, [None] * items.num_rows))
    np.testing.assert_allclose(vecs[:3], no_image[:3], atol=1e-6)
    np.testing.assert_allclose(vecs[3:], encoder.embed_items(items)[3:], atol=1e-6)


def test_audio_of_the_wrong_length_or_with_nan_is_a_row_error(items: pa.Table) -> None:
    audio = items["audio"].to_pylist()
    audio[4] = audio[4][:5]
    audio[5] = [float("nan")] * len(audio[5])
    col = pa.array(audio, items.schema.field("audio").type)
    table = items.set_column(items.schema.get_field_index("audio"), "audio", col)
    inputs = item_inputs(table, OmniConfig())
    assert not inputs.present[4, 2] and not inputs.present[5, 2] and inputs.present[6, 2]
    assert inputs.errors == [
        "items.audio row 4 (item 'i4'): expected 32 values, got shape (5,)",
        "items.audio row 5 (item 'i5'): non-finite values",
    ]


def test_images_of_another_size_are_resized(items: pa.Table) -> None:
    pixels = decode_image(items["image"][0].as_py(), 16)
    assert pixels.shape == (3, 16, 16) and 0.0 <= pixels.min() and pixels.max() <= 1.0


def test_pandas_frames_and_arrow_tables_give_the_same_inputs(items: pa.Table) -> None:
    cfg = OmniConfig()
    a, b = item_inputs(items, cfg), item_inputs(items.to_pandas(), cfg)
    for name in ("text_ids", "image", "audio", "concepts", "creator", "present"):
        np.testing.assert_array_equal(getattr(a, name).numpy(), getattr(b, name).numpy())

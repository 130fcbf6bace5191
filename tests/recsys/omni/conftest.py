"""Fixtures for the omni-modal tests: a tiny simulated catalogue with every modality."""

from __future__ import annotations

import pyarrow as pa
import pytest
import torch

from recsys.config import SimulatorConfig
from recsys.omni.config import OmniConfig
from recsys.omni.fusion import OmniModalEncoder
from recsys.sources.world import World


@pytest.fixture(scope="session")
def world() -> World:
    return World.build(SimulatorConfig(num_users=20, num_items=40, num_concepts=8, days=1))


@pytest.fixture(scope="session")
def items(world: World) -> pa.Table:
    """40 items with title, text, concepts, creator, a PNG image and an audio vector."""
    return world.items_table()


@pytest.fixture()
def small_cfg() -> OmniConfig:
    return OmniConfig(dim=16, matryoshka=[8, 16], text_buckets=1024, category_rows=512,
                      category_dim=4, fusion_heads=2, batch_size=16)  # fmt: skip


@pytest.fixture()
def encoder(small_cfg: OmniConfig) -> OmniModalEncoder:
    torch.manual_seed(0)
    return OmniModalEncoder(small_cfg).eval()

"""Omni-modal item embeddings distilled with collaborative signals (SAIL-Embedding, CPU-sized).

- ``config``: ``OmniConfig``, the ``omni:`` config section;
- ``item_media``: raw ``items`` rows -> ``OmniInputs`` tensors, with per-row media errors;
- ``encoders``: one small encoder per modality (text, image, audio, categorical);
- ``fusion``: ``OmniModalEncoder``, a transformer over modality tokens with modality dropout;
- ``losses``: InfoNCE with a learnable temperature, Matryoshka prefixes, sequence-to-item with
  log-Q correction, ID-to-item alignment;
- ``training``: stage 1 (content-aware) and stage 2 (collaboration-aware) training;
- ``next_item``: next-item cases from raw logs (time split, cold/warm targets) and recall@K;
- ``id_tower``: an ID-only ``TwoTower`` trained in process (baseline and ``id2item`` teacher);
- ``bundle``: the omni item-embedding table and the ``omni`` bundle, written atomically;
- ``match_feature``: ``OmniMatchFeature``, the ranker's omni similarity to the user's history;
- ``pipeline``: ``run_omni``, raw items + examples -> trained and exported omni bundle.
"""

# ``recsys.config`` imports ``recsys.omni.config`` (for ``PipelineConfig.omni``) after defining
# ``Section``; loading it first keeps either import order free of a circular-import error.
import recsys.config  # noqa: E402, F401

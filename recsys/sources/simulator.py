"""The seeded synthetic world: users, items, creators and a KuaiSim-style user response model.

The world is built once from a ``SimulatorConfig`` (``World.build``); every array in it is a
function of the config and its seed. Simulating a day follows KuaiSim's split into three
models:

- **immediate feedback**: every shown item is an ``impression``; the user clicks with
  probability ``sigmoid(affinity) * (1 + position) ** -position_bias``; a click's dwell time is
  lognormal with a mean that grows with affinity;
- **leaving the session**: a session is a run of slates; the user leaves after
  ``leave_after_bad_slates`` slates in a row without a click, at random after any slate, or
  after ``max_slates_per_session`` slates;
- **retention**: the satisfaction of a day (``log1p`` of the dwell minutes) feeds a per-user
  memory; the chance of being active tomorrow is ``sigmoid(base + w * (memory - 1))``. A policy
  that shows better-matched items therefore raises long-term value (LT7), which ``replay``
  measures.

Hidden ground truth: ``affinity(u, i) = bias + w_match * interest_u . concepts_i +
w_pop * popularity_z_i + creator_quality + user_bias_u + taste_weight * taste_u . taste_i``
(a logit). The last term (``SimulatorConfig.taste_dim`` latent factors, off by default) is
collaborative taste that no feature shows: only ids and co-clicks reveal it. A policy sees candidate
indices and returns scores; its ranking is the user's feed for the day, consumed slate by slate
across the day's sessions (a session continues where the previous one stopped).

Everything is vectorised with numpy over blocks of users (loops are per day, per user block
and per session index only). ``simulate`` returns ``RawLogs`` in memory; ``simulate_to_parquet``
streams the same events block by block, so memory stays bounded for any number of events.

Worked example::

    cfg = SimulatorConfig(num_users=500, num_items=300, days=7, with_media=False)
    logs = simulate(cfg)        # RawLogs: ~86k impressions + ~5k clicks, 420 items, 500 users
    world = World.build(cfg)
    replay(world, oracle_policy(world), days=7, seed=0).lt7    # 4.40 active days of 7
    replay(world, random_policy(world), days=7, seed=0).lt7    # 3.92
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.atomic import atomic_dir
from recsys.config import PipelineConfig, SimulatorConfig
from recsys.contract import EVENTS, ITEMS, STR_LIST, TS_TYPE, USERS
from recsys.sources.raw_logs import RawLogs

Policy = Callable[[np.ndarray, np.ndarray, int], np.ndarray]
"""``policy(user_idx (U,) int64, candidate_idx (C,) int64, day) -> scores (U, C) float``."""

DAY_MS = 86_400_000
BLOCK_USERS = 2048  # users per block; part of the output's definition (random streams per block)
SECONDS_PER_IMPRESSION = 3.0
SESSION_START_WINDOW_S = 18 * 3600  # sessions start in the first 18 h of the day

# Ground-truth affinity logit and response constants (documented in the module docstring).
AFFINITY_BIAS = -3.0
W_MATCH = 10.0
W_POP = 0.3
DWELL_MEDIAN_S = 20.0
DWELL_AFFINITY = 0.35
DWELL_SIGMA = 0.7
DWELL_MAX_S = 1800.0

# Random stream ids: each (seed, stream, day, block) gets an independent generator.
_S_WORLD, _S_ACTIVE, _S_SESSIONS, _S_FEEDBACK, _S_POLICY = range(5)

# Readable concept names, each with a few linked words for titles and descriptions.
_CONCEPT_WORDS: dict[str, tuple[str, ...]] = {
    "jazz": ("saxophone", "swing", "bebop", "trumpet"),
    "cooking": ("recipe", "kitchen", "simmer", "spice"),
    "football": ("goal", "striker", "league", "derby"),
    "travel": ("journey", "passport", "island", "backpack"),
    "gaming": ("console", "speedrun", "boss", "quest"),
    "fitness": ("workout", "cardio", "muscle", "stretch"),
    "science": ("experiment", "physics", "theory", "lab"),
    "history": ("empire", "ancient", "war", "archive"),
    "fashion": ("runway", "outfit", "denim", "style"),
    "comedy": ("joke", "sketch", "standup", "prank"),
    "finance": ("stocks", "budget", "invest", "crypto"),
    "pets": ("puppy", "kitten", "leash", "grooming"),
    "gardening": ("seedling", "compost", "orchid", "harvest"),
    "cars": ("engine", "drift", "horsepower", "garage"),
    "movies": ("trailer", "director", "sequel", "premiere"),
    "classical": ("symphony", "violin", "sonata", "opera"),
    "hiphop": ("rap", "beat", "freestyle", "mixtape"),
    "rock": ("guitar", "riff", "drummer", "amp"),
    "photography": ("lens", "aperture", "portrait", "exposure"),
    "painting": ("canvas", "brush", "watercolor", "palette"),
    "astronomy": ("galaxy", "telescope", "comet", "orbit"),
    "coding": ("python", "debug", "compiler", "refactor"),
    "ai": ("neural", "model", "dataset", "robot"),
    "baking": ("sourdough", "pastry", "oven", "croissant"),
    "coffee": ("espresso", "barista", "roast", "latte"),
    "wine": ("vineyard", "merlot", "cellar", "tasting"),
    "yoga": ("asana", "breath", "mat", "balance"),
    "running": ("marathon", "sprint", "trail", "pace"),
    "cycling": ("bike", "pedal", "peloton", "climb"),
    "basketball": ("dunk", "hoop", "rebound", "playoffs"),
    "tennis": ("serve", "racket", "volley", "grandslam"),
    "anime": ("manga", "shonen", "studio", "cosplay"),
    "books": ("novel", "chapter", "author", "library"),
    "poetry": ("verse", "rhyme", "sonnet", "haiku"),
    "politics": ("election", "senate", "policy", "debate"),
    "parenting": ("toddler", "bedtime", "school", "family"),
    "diy": ("drill", "woodwork", "repair", "paint"),
    "architecture": ("facade", "skyscraper", "bridge", "blueprint"),
    "nature": ("forest", "river", "wildlife", "mountain"),
    "ocean": ("reef", "whale", "surf", "tide"),
    "space": ("rocket", "launch", "astronaut", "mars"),
    "medicine": ("doctor", "vaccine", "surgery", "clinic"),
    "psychology": ("mind", "habit", "emotion", "therapy"),
    "languages": ("grammar", "accent", "vocabulary", "fluent"),
    "magic": ("trick", "illusion", "cards", "wand"),
    "dance": ("ballet", "choreography", "salsa", "tango"),
    "makeup": ("lipstick", "contour", "blush", "tutorial"),
    "chess": ("gambit", "checkmate", "opening", "endgame"),
    "camping": ("tent", "campfire", "hike", "lantern"),
    "fishing": ("bait", "trout", "rod", "lake"),
    "esports": ("tournament", "clutch", "team", "arena"),
    "crafts": ("knitting", "yarn", "origami", "glue"),
    "horror": ("ghost", "haunted", "scream", "zombie"),
    "romance": ("love", "date", "wedding", "heart"),
    "economics": ("market", "inflation", "trade", "growth"),
    "startups": ("founder", "pitch", "venture", "launchpad"),
    "vlogs": ("daily", "morning", "routine", "vlog"),
    "asmr": ("whisper", "tapping", "relax", "sleep"),
    "kpop": ("idol", "comeback", "fandom", "choreo"),
    "countrymusic": ("banjo", "honkytonk", "ranch", "ballad"),
    "skateboarding": ("kickflip", "ramp", "deck", "grind"),
    "surfing": ("wave", "board", "barrel", "beach"),
    "weather": ("storm", "forecast", "rain", "heatwave"),
    "trains": ("railway", "locomotive", "station", "track"),
}
_FILLER = (
    "the best", "how to", "my first", "top ten", "why", "ultimate", "guide", "live", "new",
    "today", "with friends", "explained", "review", "challenge", "at home", "in five minutes",
    "for beginners", "you need", "episode", "story", "secret", "real", "part two", "weekend",
)  # fmt: skip
AGE_BUCKETS = ("18-24", "25-34", "35-44", "45-54", "55+")
COUNTRIES = ("US", "BR", "IN", "DE", "JP", "FR", "MX", "KR")
_COUNTRY_BASE = np.log(np.array([0.3, 0.15, 0.2, 0.08, 0.08, 0.07, 0.07, 0.05]))


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, *stream])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _concept_vocabulary(k: int) -> tuple[list[str], list[tuple[str, ...]]]:
    """``k`` readable concept names and their linked words (reused with a suffix past 64)."""
    base = list(_CONCEPT_WORDS.items())
    names, words = [], []
    for j in range(k):
        name, linked = base[j % len(base)]
        rep = j // len(base)
        names.append(name if rep == 0 else f"{name}{rep + 1}")
        words.append(linked if rep == 0 else tuple(f"{w}{rep + 1}" for w in linked))
    return names, words


@dataclass
class World:
    """Every hidden and visible array of one simulated world (built by ``World.build``).

    Shapes: ``U`` users, ``I`` items (initial catalogue then ``new_items_per_day`` per day,
    sorted by ``item_day``), ``K`` concepts, ``R`` creators, ``M = 3`` main concepts per item.
    """

    cfg: SimulatorConfig
    concept_names: list[str]  # (K,)
    concept_words: list[tuple[str, ...]]  # (K,) linked words
    user_interest: np.ndarray  # (U, K) float64, rows sum to 1 (hidden)
    user_bias: np.ndarray  # (U,) click-logit bias (hidden)
    user_base_return: np.ndarray  # (U,) retention logit (hidden)
    user_declared: list[np.ndarray]  # CSR: (offsets (U+1,), concept idx) declared interests
    user_age: np.ndarray  # (U,) index into AGE_BUCKETS
    user_country: np.ndarray  # (U,) index into COUNTRIES
    creator_speciality: np.ndarray  # (R, K) rows sum to 1
    creator_quality: np.ndarray  # (R,)
    item_creator: np.ndarray  # (I,) int64
    item_concepts: np.ndarray  # (I, M) int64 main concepts by weight (padding weight 0)
    item_weights: np.ndarray  # (I, M) float64, rows sum to 1
    item_popularity: np.ndarray  # (I,) Zipf weight, sums to 1 over items
    item_pop_z: np.ndarray  # (I,) standardised log popularity
    item_day: np.ndarray  # (I,) first day the item exists (0 = initial catalogue)
    item_created_ms: np.ndarray  # (I,) created_ts in epoch ms
    user_taste: np.ndarray  # (U, T) hidden latent taste, T = cfg.taste_dim (may be 0)
    item_taste: np.ndarray  # (I, T), scaled so that taste_u . taste_i has std taste_weight
    start_ms: int = 0

    @property
    def num_users(self) -> int:
        return int(self.user_interest.shape[0])

    @property
    def num_items(self) -> int:
        return int(self.item_creator.shape[0])

    @property
    def num_days(self) -> int:
        return self.cfg.days

    @classmethod
    def build(cls, cfg: SimulatorConfig) -> World:
        """Draw users, creators and items from ``cfg`` (deterministic in ``cfg.seed``)."""
        rng = _rng(cfg.seed, _S_WORLD)
        k, u, r = cfg.num_concepts, cfg.num_users, cfg.num_creators
        names, words = _concept_vocabulary(k)
        # Concept popularity is itself Zipf-like: some topics are mainstream, some niche.
        concept_pop = 1.0 / np.arange(1, k + 1) ** 0.7
        concept_pop = rng.permutation(concept_pop / concept_pop.sum())

        interest = rng.dirichlet(5.0 * concept_pop + 1e-3, size=u)
        user_bias = rng.normal(0.0, 0.3, u)
        base_return = rng.normal(0.3, 1.0, u)
        declared = _declared_interests(rng, interest)
        age_pref = rng.normal(0.0, 1.0, (k, len(AGE_BUCKETS)))
        country_pref = rng.normal(0.0, 1.0, (k, len(COUNTRIES)))
        age = _gumbel_argmax(rng, 3.0 * interest @ age_pref)
        country = _gumbel_argmax(rng, _COUNTRY_BASE + 2.0 * interest @ country_pref)

        speciality = rng.dirichlet(np.full(k, 0.05), size=r)
        quality = rng.normal(0.0, 0.3, r)
        productivity = 1.0 / np.arange(1, r + 1) ** 0.8
        productivity = rng.permutation(productivity / productivity.sum())

        n_items = cfg.num_items + max(cfg.days - 1, 0) * cfg.new_items_per_day
        creator = rng.choice(r, size=n_items, p=productivity)
        concepts, weights = _item_concepts(rng, speciality[creator], concept_pop)
        rank = rng.permutation(n_items) + 1.0
        popularity = rank**-cfg.zipf_exponent
        popularity /= popularity.sum()
        logpop = np.log(popularity)
        pop_z = (logpop - logpop.mean()) / (logpop.std() + 1e-12)

        item_day = np.zeros(n_items, np.int64)
        item_day[cfg.num_items :] = 1 + np.arange(n_items - cfg.num_items) // max(
            cfg.new_items_per_day, 1
        )
        start_ms = int(
            datetime(
                cfg.start_date.year, cfg.start_date.month, cfg.start_date.day, tzinfo=UTC
            ).timestamp()
            * 1000
        )
        created = start_ms + item_day * DAY_MS
        # The initial catalogue was created over the year before the simulation starts.
        created[: cfg.num_items] -= rng.integers(0, 365, cfg.num_items) * DAY_MS
        user_taste, item_taste = _tastes(cfg, n_items)
        return cls(
            cfg=cfg,
            concept_names=names,
            concept_words=words,
            user_interest=interest,
            user_bias=user_bias,
            user_base_return=base_return,
            user_declared=declared,
            user_age=age,
            user_country=country,
            creator_speciality=speciality,
            creator_quality=quality,
            item_creator=creator,
            item_concepts=concepts,
            item_weights=weights,
            item_popularity=popularity,
            item_pop_z=pop_z,
            item_day=item_day,
            item_created_ms=created,
            user_taste=user_taste,
            item_taste=item_taste,
            start_ms=start_ms,
        )

    # ---- ground truth -------------------------------------------------------------------

    def item_vectors(self, item_idx: np.ndarray) -> np.ndarray:
        """Dense concept vectors ``(C, K)`` of items ``item_idx (C,)``."""
        out = np.zeros((len(item_idx), self.cfg.num_concepts))
        rows = np.arange(len(item_idx))[:, None]
        np.add.at(out, (rows, self.item_concepts[item_idx]), self.item_weights[item_idx])
        return out

    def affinity(self, user_idx: np.ndarray, item_idx: np.ndarray) -> np.ndarray:
        """Hidden click logit for every pair: ``(U,)`` x ``(C,)`` -> ``(U, C)``."""
        match = self.user_interest[user_idx] @ self.item_vectors(item_idx).T
        item_term = (
            W_POP * self.item_pop_z[item_idx] + self.creator_quality[self.item_creator[item_idx]]
        )
        logit = (
            AFFINITY_BIAS + W_MATCH * match + item_term[None, :] + self.user_bias[user_idx, None]
        )
        if self.cfg.taste_dim:
            logit = logit + self.user_taste[user_idx] @ self.item_taste[item_idx].T
        return logit

    def pair_affinity(self, user_idx: np.ndarray, item_idx: np.ndarray) -> np.ndarray:
        """Hidden click logit of aligned pairs: ``user_idx``, ``item_idx`` of one shape ``S``."""
        cidx = self.item_concepts[item_idx]  # S + (M,)
        match = (self.user_interest[user_idx[..., None], cidx] * self.item_weights[item_idx]).sum(
            -1
        )
        logit = (
            AFFINITY_BIAS
            + W_MATCH * match
            + W_POP * self.item_pop_z[item_idx]
            + self.creator_quality[self.item_creator[item_idx]]
            + self.user_bias[user_idx]
        )
        if self.cfg.taste_dim:
            logit = logit + (self.user_taste[user_idx] * self.item_taste[item_idx]).sum(-1)
        return logit

    def live_items(self, day: int) -> np.ndarray:
        """Indices of the items that exist on ``day`` (a prefix: items are sorted by day)."""
        return np.arange(int(np.searchsorted(self.item_day, day, side="right")), dtype=np.int64)

    # ---- visible tables -----------------------------------------------------------------

    def user_ids(self) -> pa.Array:
        return pa.array(np.char.add("u", np.arange(self.num_users).astype(str)), pa.string())

    def item_ids(self) -> pa.Array:
        return pa.array(np.char.add("i", np.arange(self.num_items).astype(str)), pa.string())

    def users_table(self) -> pa.Table:
        """``users``: user_id, declared concepts (noisy, partial), age_bucket, country."""
        offsets, flat = self.user_declared
        names = pa.array(self.concept_names, pa.string())
        concepts = pa.ListArray.from_arrays(
            pa.array(offsets, pa.int32()), pc.take(names, pa.array(flat))
        )
        return pa.table(
            {
                "user_id": self.user_ids(),
                "concepts": concepts.cast(STR_LIST),
                "age_bucket": pc.take(pa.array(AGE_BUCKETS), pa.array(self.user_age)),
                "country": pc.take(pa.array(COUNTRIES), pa.array(self.user_country)),
            }
        ).cast(_schema_with(USERS.schema, ["age_bucket", "country"]))

    def items_table(self) -> pa.Table:
        """``items``: ids, titles and text from concept words, concepts, creator, created_ts,
        and (``cfg.with_media``) a PNG image and an audio-like vector per item."""
        n = self.num_items
        titles, texts = self._texts()
        mask = self.item_weights > 0
        counts = mask.sum(1)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
        names = pa.array(self.concept_names, pa.string())
        concepts = pa.ListArray.from_arrays(
            pa.array(offsets), pc.take(names, pa.array(self.item_concepts[mask]))
        ).cast(STR_LIST)
        cols: dict[str, pa.Array] = {
            "item_id": self.item_ids(),
            "title": pa.array(titles, pa.string()),
            "text": pa.array(texts, pa.string()),
            "concepts": concepts,
            "creator": pa.array(np.char.add("cr", self.item_creator.astype(str)), pa.string()),
            "created_ts": pa.array(self.item_created_ms, TS_TYPE),
        }
        if self.cfg.with_media:
            cols["image"] = pa.array(self._images(), pa.binary())
            audio = self._audio().astype(np.float32)
            cols["audio"] = pa.ListArray.from_arrays(
                pa.array(np.arange(n + 1, dtype=np.int32) * audio.shape[1]),
                pa.array(audio.ravel()),
            ).cast(pa.list_(pa.float32()))
        else:
            cols["image"] = pa.nulls(n, pa.binary())
            cols["audio"] = pa.nulls(n, pa.list_(pa.float32()))
        return pa.table(cols).cast(ITEMS.schema)

    def _texts(self) -> tuple[list[str], list[str]]:
        rng = _rng(self.cfg.seed, _S_WORLD, 1)
        n = self.num_items
        n_filler = len(_FILLER)
        # Per item: which main concept each word comes from (by weight), which linked word,
        # which filler; drawn as arrays, joined per item.
        w = self.item_weights / self.item_weights.sum(1, keepdims=True)
        u = rng.random((n, 14))
        pick = (np.cumsum(w, 1)[:, None, :] < u[:, :, None]).sum(-1).clip(0, 2)
        concept = np.take_along_axis(self.item_concepts, pick, 1)
        word_j = rng.integers(0, 4, (n, 14))
        filler = rng.integers(0, n_filler, (n, 4))
        n_text = rng.integers(6, 13, n)
        cw = self.concept_words
        titles, texts = [], []
        for i in range(n):  # per item (not per event): string assembly
            c, j = concept[i], word_j[i]
            titles.append(f"{_FILLER[filler[i, 0]]} {cw[c[0]][j[0]]} {cw[c[1]][j[1]]}".title())
            body = [cw[c[t]][j[t]] for t in range(2, 2 + n_text[i])]
            texts.append(
                f"{_FILLER[filler[i, 1]]} {' '.join(body[:3])} {_FILLER[filler[i, 2]]} "
                f"{' '.join(body[3:])} {_FILLER[filler[i, 3]]}."
            )
        return titles, texts

    def _images(self) -> list[bytes]:
        """PNG bytes per item: the main concept sets the shape and colour, the second concept
        tints the background; position jitter and pixel noise on top."""
        from PIL import Image

        s, n, k = self.cfg.image_size, self.num_items, self.cfg.num_concepts
        rng = _rng(self.cfg.seed, _S_WORLD, 2)
        palette = _palette(k)
        masks = _shape_masks(s)  # (8, s, s)
        main, second = self.item_concepts[:, 0], self.item_concepts[:, 1]
        has_second = self.item_weights[:, 1] > 0
        bg = np.where(has_second[:, None], 0.35 * palette[second] + 150, 200.0)
        dy, dx = rng.integers(-s // 8, s // 8 + 1, (2, n))
        yy = (np.arange(s)[None, :] - dy[:, None]) % s  # (n, s)
        xx = (np.arange(s)[None, :] - dx[:, None]) % s
        shape = masks[main % len(masks)][np.arange(n)[:, None, None], yy[:, :, None], xx[:, None]]
        img = np.where(shape[..., None], palette[main][:, None, None, :], bg[:, None, None, :])
        img = img + rng.normal(0.0, 12.0, img.shape)
        pixels = img.clip(0, 255).astype(np.uint8)
        out = []
        for i in range(n):  # per item: PNG encoding
            buf = io.BytesIO()
            Image.fromarray(pixels[i], "RGB").save(buf, format="PNG", compress_level=1)
            out.append(buf.getvalue())
        return out

    def _audio(self) -> np.ndarray:
        """``(I, audio_dim)``: the weight-mix of concept prototypes plus noise."""
        rng = _rng(self.cfg.seed, _S_WORLD, 3)
        proto = rng.normal(0.0, 1.0, (self.cfg.num_concepts, self.cfg.audio_dim))
        mix = (proto[self.item_concepts] * self.item_weights[..., None]).sum(1)
        return mix + rng.normal(0.0, 0.5, mix.shape)


def _schema_with(schema: pa.Schema, extra_strings: list[str]) -> pa.Schema:
    for name in extra_strings:
        schema = schema.append(pa.field(name, pa.string(), nullable=False))
    return schema


def _tastes(cfg: SimulatorConfig, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Hidden taste factors ``(U, T)``, ``(I, T)``: entries ``N(0, s)`` with ``s**2 =
    taste_weight / sqrt(T)``, so ``taste_u . taste_i`` has mean 0 and std ``taste_weight``.
    Own random stream: turning taste on leaves every other draw of the world unchanged."""
    t = cfg.taste_dim
    rng = _rng(cfg.seed, _S_WORLD, 4)
    scale = np.sqrt(cfg.taste_weight / np.sqrt(t)) if t else 0.0
    return (
        rng.normal(0.0, 1.0, (cfg.num_users, t)) * scale,
        rng.normal(0.0, 1.0, (n_items, t)) * scale,
    )


def _gumbel_argmax(rng: np.random.Generator, logits: np.ndarray) -> np.ndarray:
    return np.argmax(logits + rng.gumbel(size=logits.shape), axis=1)


def _declared_interests(rng: np.random.Generator, interest: np.ndarray) -> list[np.ndarray]:
    """CSR (offsets, concepts): each user's top 3 true interests above 5%, each kept with
    probability 0.7, plus (probability 0.3) one wrong concept at random."""
    u, k = interest.shape
    top = np.argsort(-interest, axis=1, kind="stable")[:, :3]
    keep = (np.take_along_axis(interest, top, 1) > 0.05) & (rng.random((u, 3)) < 0.7)
    wrong = rng.integers(0, k, u)
    add_wrong = (rng.random(u) < 0.3) & ~(top == wrong[:, None]).any(1)
    cand = np.concatenate([top, wrong[:, None]], 1)
    mask = np.concatenate([keep, add_wrong[:, None]], 1)
    offsets = np.concatenate([[0], np.cumsum(mask.sum(1))]).astype(np.int32)
    return [offsets, cand[mask].astype(np.int64)]


def _item_concepts(
    rng: np.random.Generator, speciality: np.ndarray, concept_pop: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """1-3 main concepts per item, mostly from the creator's speciality; returns
    ``(concepts (I, 3), weights (I, 3))`` sorted by weight (padding has weight 0)."""
    n, k = speciality.shape
    n_main = rng.choice([1, 2, 3], size=n, p=[0.5, 0.35, 0.15])
    from_creator = rng.random((n, 3)) < 0.8
    dist = np.where(from_creator[..., None], speciality[:, None, :], concept_pop[None, None, :])
    u = rng.random((n, 3, 1))
    picked = (np.cumsum(dist, -1) < u).sum(-1).clip(0, k - 1)
    raw_w = np.array([1.0, 0.5, 0.3]) * rng.uniform(0.7, 1.3, (n, 3))
    raw_w[np.arange(3)[None, :] >= n_main[:, None]] = 0.0
    dense = np.zeros((n, k))
    np.add.at(dense, (np.arange(n)[:, None], picked), raw_w)
    order = np.argsort(-dense, axis=1, kind="stable")[:, :3]
    weights = np.take_along_axis(dense, order, 1)
    return order.astype(np.int64), weights / weights.sum(1, keepdims=True)


def _palette(k: int) -> np.ndarray:
    """``(k, 3)`` well-spread RGB colours (golden-ratio hues, two brightness levels)."""
    h = (np.arange(k) * 0.618033988749895) % 1.0
    v = np.where(np.arange(k) % 2 == 0, 230.0, 150.0)
    i = np.floor(h * 6).astype(int) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = 0 * v + 30, v * (1 - 0.8 * f), v * (1 - 0.8 * (1 - f))
    table = np.stack(
        [np.stack(c, 1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))]
    )
    return table[i, np.arange(k)]


def _shape_masks(s: int) -> np.ndarray:
    """``(8, s, s)`` bool: disk, square, triangle, ring, cross, diamond, h-stripes, v-stripes."""
    y, x = np.mgrid[0:s, 0:s] / (s - 1) * 2 - 1
    r = np.hypot(x, y)
    return np.stack(
        [
            r < 0.6,
            (abs(x) < 0.5) & (abs(y) < 0.5),
            (y > -0.6) & (y < 0.6) & (abs(x) < (y + 0.6) / 2),
            (r > 0.4) & (r < 0.7),
            (abs(x) < 0.2) | (abs(y) < 0.2),
            abs(x) + abs(y) < 0.7,
            (np.floor((y + 1) * 4) % 2) == 0,
            (np.floor((x + 1) * 4) % 2) == 0,
        ]
    )


# ---- policies -----------------------------------------------------------------------------


def random_policy(world: World, seed: int = 0) -> Policy:
    """Uniformly random rankings (fresh scores per call, deterministic in the call)."""

    def policy(user_idx: np.ndarray, candidate_idx: np.ndarray, day: int) -> np.ndarray:
        first = int(user_idx[0]) if len(user_idx) else 0
        rng = _rng(seed, _S_POLICY, day, first, len(user_idx))
        return rng.random((len(user_idx), len(candidate_idx)))

    return policy


def popularity_policy(world: World) -> Policy:
    """Most popular items first, the same ranking for every user."""

    def policy(user_idx: np.ndarray, candidate_idx: np.ndarray, day: int) -> np.ndarray:
        score = np.log(world.item_popularity[candidate_idx])
        return np.broadcast_to(score, (len(user_idx), len(candidate_idx)))

    return policy


def oracle_policy(world: World) -> Policy:
    """Ranks by the hidden true affinity (an upper bound no learned model reaches)."""

    def policy(user_idx: np.ndarray, candidate_idx: np.ndarray, day: int) -> np.ndarray:
        return world.affinity(user_idx, candidate_idx)

    return policy


def logging_policy(world: World, seed: int | None = None) -> Policy:
    """The policy that produced the logs: Plackett-Luce sampling (Gumbel top-k) with item
    probability ``(1 - exploration) * pop ** power / Z + exploration / C``."""
    cfg = world.cfg
    seed = cfg.seed if seed is None else seed

    def policy(user_idx: np.ndarray, candidate_idx: np.ndarray, day: int) -> np.ndarray:
        w = world.item_popularity[candidate_idx] ** cfg.logging_popularity_power
        p = (1 - cfg.exploration) * w / w.sum() + cfg.exploration / len(candidate_idx)
        first = int(user_idx[0]) if len(user_idx) else 0
        rng = _rng(seed, _S_POLICY, day, first, len(user_idx))
        return np.log(p)[None, :] + rng.gumbel(size=(len(user_idx), len(candidate_idx)))

    return policy


# ---- the day loop -------------------------------------------------------------------------


@dataclass
class _Block:
    """Events of one user block on one day (aligned arrays), sorted by (ts, user, kind)."""

    user: np.ndarray  # int64
    item: np.ndarray  # int64
    ts_ms: np.ndarray  # int64
    click: np.ndarray  # bool: False = impression, True = click
    dwell: np.ndarray  # float64 (NaN for impressions)


@dataclass
class _DayStats:
    day: int
    active: np.ndarray  # (U,) bool
    impressions: int = 0
    clicks: int = 0
    dwell_s: float = 0.0


def _feed(scores: np.ndarray, candidates: np.ndarray, length: int) -> np.ndarray:
    """Top ``length`` candidates per row by score, best first: ``(B, C) -> (B, length)``."""
    if length < scores.shape[1]:
        top = np.argpartition(-scores, length - 1, axis=1)[:, :length]
    else:
        top = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1, kind="stable")
    return candidates[np.take_along_axis(top, order, 1)]


def _simulate_block(
    world: World,
    policy: Policy,
    users: np.ndarray,
    candidates: np.ndarray,
    day: int,
    seed: int,
    block: int,
    emit: bool,
) -> tuple[np.ndarray, int, int, float, _Block | None]:
    """One day of sessions for the active ``users (B,)`` of one block.

    Returns (satisfaction (B,), impressions, clicks, dwell seconds, events or None).
    """
    cfg = world.cfg
    b, s = len(users), cfg.slate_size
    rng_s = _rng(seed, _S_SESSIONS, day, block)
    rng_f = _rng(seed, _S_FEEDBACK, day, block)
    n_sess = np.minimum(
        1 + rng_s.poisson(max(cfg.sessions_per_active_day - 1, 0), b), cfg.max_sessions_per_day
    )
    n_slates = min(int(n_sess.max()) * cfg.max_slates_per_session, len(candidates) // s)
    if n_slates == 0:
        return np.zeros(b), 0, 0, 0.0, None
    f = n_slates * s
    scores = np.asarray(policy(users, candidates, day), dtype=np.float64)
    if scores.shape != (b, len(candidates)):
        raise ValueError(
            f"policy returned scores of shape {scores.shape}, expected {(b, len(candidates))} "
            f"(users, candidates) on day {day}"
        )
    items = _feed(scores, candidates, f)  # (B, F)

    # Immediate feedback.
    logit = world.pair_affinity(users[:, None], items)
    position = np.arange(f) % s
    examine = (1.0 + position) ** -cfg.position_bias
    click = rng_f.random((b, f)) < _sigmoid(logit) * examine
    dwell = np.exp(
        np.log(DWELL_MEDIAN_S)
        + DWELL_AFFINITY * logit
        + DWELL_SIGMA * rng_f.standard_normal((b, f))
    ).clip(1.0, DWELL_MAX_S)

    # Leaving: walk the feed slate by slate, one session index at a time.
    slate_click = click.reshape(b, n_slates, s).any(2)
    hazard = rng_f.random((b, n_slates)) < cfg.leave_prob_per_slate
    rows = np.arange(b)[:, None]
    win = np.arange(cfg.max_slates_per_session)
    ptr = np.zeros(b, np.int64)
    session_of_slate = np.full((b, n_slates), -1, np.int64)
    session_first_slate = np.zeros((b, cfg.max_sessions_per_day), np.int64)
    for k in range(int(n_sess.max())):
        live = (k < n_sess) & (ptr < n_slates)
        idx = ptr[:, None] + win
        valid = idx < n_slates
        idx = np.minimum(idx, n_slates - 1)
        bad = ~slate_click[rows, idx]
        run = np.cumsum(bad, 1)
        streak = run - np.maximum.accumulate(np.where(bad, 0, run), 1)
        leave = (streak >= cfg.leave_after_bad_slates) | hazard[rows, idx] | ~valid
        leave[:, -1] = True
        length = np.where(live, np.argmax(leave, 1) + 1, 0)
        length = np.minimum(length, n_slates - ptr)
        in_session = live[:, None] & (win < length[:, None]) & valid
        session_of_slate[rows.repeat(len(win), 1)[in_session], idx[in_session]] = k
        session_first_slate[:, k] = ptr
        ptr = ptr + length
    sess = np.repeat(session_of_slate, s, axis=1)  # (B, F)
    shown = sess >= 0
    click &= shown
    dwell = np.where(click, dwell, 0.0)

    sat = np.log1p(dwell.sum(1) / 60.0)
    n_imp, n_clk, dwell_sum = int(shown.sum()), int(click.sum()), float(dwell.sum())
    if not emit:
        return sat, n_imp, n_clk, dwell_sum, None

    # Time: sessions start at sorted random offsets; within a session each impression takes
    # SECONDS_PER_IMPRESSION and a click adds its dwell before the next impression.
    offsets = np.sort(rng_s.random((b, cfg.max_sessions_per_day)) * SESSION_START_WINDOW_S, 1)
    cost = np.where(shown, SECONDS_PER_IMPRESSION + dwell, 0.0)
    elapsed = np.cumsum(cost, 1) - cost  # exclusive
    sess_c = np.maximum(sess, 0)
    first_pos = np.take_along_axis(session_first_slate, sess_c, 1) * s
    within = elapsed - np.take_along_axis(elapsed, first_pos, 1)
    t = np.take_along_axis(offsets, sess_c, 1) + within
    day_ms = world.start_ms + day * DAY_MS
    ts = np.minimum(day_ms + np.round(t * 1000).astype(np.int64), day_ms + DAY_MS - 1)

    u_flat = np.broadcast_to(users[:, None], (b, f))[shown]
    i_flat, ts_flat, c_flat, d_flat = items[shown], ts[shown], click[shown], dwell[shown]
    user = np.concatenate([u_flat, u_flat[c_flat]])
    item = np.concatenate([i_flat, i_flat[c_flat]])
    tsa = np.concatenate([ts_flat, ts_flat[c_flat]])
    kind = np.concatenate([np.zeros(len(u_flat), bool), np.ones(int(c_flat.sum()), bool)])
    val = np.concatenate([np.full(len(u_flat), np.nan), d_flat[c_flat]])
    order = np.lexsort((kind, item, user, tsa))
    ev = _Block(user[order], item[order], tsa[order], kind[order], val[order])
    return sat, n_imp, n_clk, dwell_sum, ev


def _run(
    world: World, policy: Policy, days: int, seed: int, emit: bool
) -> Iterator[tuple[_DayStats, _Block | None]]:
    """Simulate ``days`` days. Yields ``(stats, events)`` per user block as soon as it is
    simulated (only if ``emit``), then ``(stats, None)`` once the day is complete; so at most
    one block of events is alive at a time."""
    cfg = world.cfg
    n_users = world.num_users
    memory = np.ones(n_users)  # satisfaction memory; 1.0 = neutral
    for day in range(days):
        u = _rng(seed, _S_ACTIVE, day).random(n_users)
        logit = world.user_base_return
        if day > 0:
            logit = logit + cfg.return_satisfaction_weight * (memory - 1.0)
        active = u < _sigmoid(logit)
        stats = _DayStats(day, active)
        candidates = world.live_items(day)
        sat_today = np.zeros(n_users)
        for block, lo in enumerate(range(0, n_users, BLOCK_USERS)):
            users = lo + np.flatnonzero(active[lo : lo + BLOCK_USERS])
            if len(users) == 0:
                continue
            sat, n_imp, n_clk, dw, ev = _simulate_block(
                world, policy, users, candidates, day, seed, block, emit
            )
            sat_today[users] = sat
            stats.impressions += n_imp
            stats.clicks += n_clk
            stats.dwell_s += dw
            if ev is not None:
                yield stats, ev
        m = cfg.satisfaction_memory
        memory = m * memory + (1 - m) * sat_today
        yield stats, None


def _events_table(ev: _Block, user_ids: pa.Array, item_ids: pa.Array) -> pa.Table:
    return pa.table(
        {
            "user_id": pc.take(user_ids, pa.array(ev.user)),
            "item_id": pc.take(item_ids, pa.array(ev.item)),
            "ts": pa.array(ev.ts_ms, TS_TYPE),
            "event": pc.take(pa.array(["impression", "click"]), pa.array(ev.click.view(np.int8))),
            "value": pa.array(ev.dwell, pa.float64(), mask=~ev.click),
        },
        schema=_EVENTS_SCHEMA,
    )


_EVENTS_SCHEMA = EVENTS.schema


# ---- public API ---------------------------------------------------------------------------


@dataclass
class ReplayResult:
    """What a policy achieved in the simulated world.

    ``lt7`` is the mean, over users active on day 0, of their active days in days 0..6 (1..7);
    ``lt7_per_user`` holds those values (for statistical tests between policies).
    """

    lt7: float
    lt7_per_user: np.ndarray
    daily_active_users: list[int]
    ctr: float
    mean_dwell_s: float
    impressions: int
    clicks: int


def replay(world: World, policy: Policy, days: int, seed: int) -> ReplayResult:
    """Run ``policy`` in ``world`` for ``days`` days (no events kept) and measure LT7, DAU,
    CTR and mean dwell. Day-0 activity depends only on ``seed``, so every policy is measured
    on the same day-0 cohort."""
    if days < 1:
        raise ValueError(f"replay: days must be >= 1, got {days}")
    active_days = np.zeros(world.num_users, np.int64)
    cohort = None
    dau, imp, clk, dwell = [], 0, 0, 0.0
    for stats, _ in _run(world, policy, days, seed, emit=False):  # day ends only
        if stats.day == 0:
            cohort = stats.active.copy()
        if stats.day < 7:
            active_days += stats.active
        dau.append(int(stats.active.sum()))
        imp, clk, dwell = imp + stats.impressions, clk + stats.clicks, dwell + stats.dwell_s
    assert cohort is not None
    lt7 = active_days[cohort].astype(np.float64)
    return ReplayResult(
        lt7=float(lt7.mean()) if len(lt7) else 0.0,
        lt7_per_user=lt7,
        daily_active_users=dau,
        ctr=clk / imp if imp else 0.0,
        mean_dwell_s=dwell / clk if clk else 0.0,
        impressions=imp,
        clicks=clk,
    )


def _blocks(world: World, progress: bool = False) -> Iterator[tuple[_DayStats, pa.Table | None]]:
    user_ids, item_ids = world.user_ids(), world.item_ids()
    from tqdm import tqdm

    bar = tqdm(total=world.cfg.days, desc="simulate", unit="day", disable=not progress)
    with bar:
        for stats, ev in _run(world, logging_policy(world), world.cfg.days, world.cfg.seed, True):
            if ev is None:
                bar.set_postfix(active=int(stats.active.sum()), clicks=stats.clicks, refresh=False)
                bar.update(1)
                yield stats, None  # end of day
            else:
                yield stats, _events_table(ev, user_ids, item_ids)


def simulate(cfg: SimulatorConfig) -> RawLogs:
    """Simulate ``cfg.days`` days of the logging policy in memory; contract-valid raw logs.

    Events are ordered by day, then user block (``BLOCK_USERS`` users by index), then
    ``(ts, user, item)``, a click right after its impression. Users carry ``age_bucket`` and
    ``country``; items carry ``creator`` and ``created_ts`` (and media if ``cfg.with_media``).
    """
    world = World.build(cfg)
    tables = [t for _, t in _blocks(world) if t is not None]
    events = pa.concat_tables(tables) if tables else _EVENTS_SCHEMA.empty_table()
    return RawLogs(events=events, items=world.items_table(), users=world.users_table())


def scale_to_events(cfg: SimulatorConfig, target_events: int) -> SimulatorConfig:
    """A copy of ``cfg`` whose number of users gives about ``target_events`` events.

    A pilot of up to 1,000 users over the configured days measures events per user (the
    logging policy's impressions + clicks), then users scale linearly. Days stay as configured.
    """
    pilot_users = min(cfg.num_users, 1000)
    pilot = World.build(cfg.model_copy(update={"num_users": pilot_users}))
    n = 0
    for stats, _ in _run(pilot, logging_policy(pilot), cfg.days, cfg.seed, emit=False):
        n += stats.impressions + stats.clicks
    per_user = max(n / pilot_users, 1e-9)
    return cfg.model_copy(update={"num_users": max(1, int(round(target_events / per_user)))})


def simulate_to_parquet(
    cfg: SimulatorConfig,
    out_dir: str | Path,
    target_events: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Stream the simulation into ``out_dir`` (events/items/users ``.parquet``, atomically).

    Events are written block by block (one row group per user block and day), so memory is
    bounded by one block whatever the total. The event rows equal ``simulate(cfg).events``.
    ``target_events`` rescales the number of users first (``scale_to_events``). Returns a
    summary (counts, CTR, daily active users, seconds, the config used).
    """
    t0 = time.perf_counter()
    if target_events is not None:
        cfg = scale_to_events(cfg, target_events)
    world = World.build(cfg)
    n_events = n_clicks = 0
    dau: list[int] = []
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        with pq.ParquetWriter(tmp / "events.parquet", _EVENTS_SCHEMA) as writer:
            for stats, table in _blocks(world, progress=progress):
                if table is None:
                    dau.append(int(stats.active.sum()))
                    n_clicks += stats.clicks
                    continue
                writer.write_table(table)
                n_events += table.num_rows
        pq.write_table(world.items_table(), tmp / "items.parquet")
        pq.write_table(world.users_table(), tmp / "users.parquet")
    return {
        "path": str(out_dir),
        "events": n_events,
        "impressions": n_events - n_clicks,
        "clicks": n_clicks,
        "ctr": n_clicks / max(n_events - n_clicks, 1),
        "users": world.num_users,
        "items": world.num_items,
        "days": cfg.days,
        "daily_active_users": dau,
        "seconds": round(time.perf_counter() - t0, 3),
        "config": cfg.model_dump(mode="json"),
    }


def run_simulate(cfg: PipelineConfig, out_dir: str | Path) -> dict[str, Any]:
    """CLI entry: write the simulator's raw logs to ``out_dir`` (streaming, progress bar)."""
    return simulate_to_parquet(cfg.simulator, out_dir, progress=True)

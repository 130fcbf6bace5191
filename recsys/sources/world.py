"""The simulated world: users, creators and items, hidden and visible, built once from a config.

``World.build(cfg)`` draws every array from ``SimulatorConfig`` and its seed (random stream
``STREAM_WORLD``), so a world is a pure function of the config. Hidden arrays (interests, biases,
taste, creator quality, popularity) drive the response model (``recsys.sources.response``);
visible ones become the ``items`` and ``users`` tables (``items_table``, ``users_table``): ids,
titles and text made of concept words, declared interests, demographics, and optionally a PNG
image and an audio-like vector per item.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys.config import SimulatorConfig
from recsys.contract import ITEMS, STR_LIST, TS_TYPE, USERS
from recsys.sources import response

DAY_MS = 86_400_000

# Random stream ids: each (seed, stream, day, block) gets an independent generator.
STREAM_WORLD, STREAM_ACTIVE, STREAM_SESSIONS, STREAM_FEEDBACK, STREAM_POLICY = range(5)

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


def stream_rng(seed: int, *stream: int) -> np.random.Generator:
    """The independent random generator of ``(seed, *stream)`` (e.g. seed, stream id, day, block)."""
    return np.random.default_rng([seed, *stream])


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
        rng = stream_rng(cfg.seed, STREAM_WORLD)
        num_concepts, num_users, num_creators = cfg.num_concepts, cfg.num_users, cfg.num_creators
        names, words = _concept_vocabulary(num_concepts)
        # Concept popularity is itself Zipf-like: some topics are mainstream, some niche.
        concept_pop = 1.0 / np.arange(1, num_concepts + 1) ** 0.7
        concept_pop = rng.permutation(concept_pop / concept_pop.sum())

        interest = rng.dirichlet(5.0 * concept_pop + 1e-3, size=num_users)
        user_bias = rng.normal(0.0, 0.3, num_users)
        base_return = rng.normal(0.3, 1.0, num_users)
        declared = _declared_interests(rng, interest)
        age_pref = rng.normal(0.0, 1.0, (num_concepts, len(AGE_BUCKETS)))
        country_pref = rng.normal(0.0, 1.0, (num_concepts, len(COUNTRIES)))
        age = _gumbel_argmax(rng, 3.0 * interest @ age_pref)
        country = _gumbel_argmax(rng, _COUNTRY_BASE + 2.0 * interest @ country_pref)

        speciality = rng.dirichlet(np.full(num_concepts, 0.05), size=num_creators)
        quality = rng.normal(0.0, 0.3, num_creators)
        productivity = 1.0 / np.arange(1, num_creators + 1) ** 0.8
        productivity = rng.permutation(productivity / productivity.sum())

        n_items = cfg.num_items + max(cfg.days - 1, 0) * cfg.new_items_per_day
        creator = rng.choice(num_creators, size=n_items, p=productivity)
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
        concept_match = self.user_interest[user_idx] @ self.item_vectors(item_idx).T
        taste_match = None
        if self.cfg.taste_dim:
            taste_match = self.user_taste[user_idx] @ self.item_taste[item_idx].T
        return response.affinity_logit(
            concept_match,
            self.item_pop_z[item_idx][None, :],
            self.creator_quality[self.item_creator[item_idx]][None, :],
            self.user_bias[user_idx, None],
            taste_match,
        )

    def pair_affinity(self, user_idx: np.ndarray, item_idx: np.ndarray) -> np.ndarray:
        """Hidden click logit of aligned pairs: ``user_idx``, ``item_idx`` of one shape ``S``."""
        main_concepts = self.item_concepts[item_idx]  # S + (M,)
        concept_match = (
            self.user_interest[user_idx[..., None], main_concepts] * self.item_weights[item_idx]
        ).sum(-1)
        taste_match = None
        if self.cfg.taste_dim:
            taste_match = (self.user_taste[user_idx] * self.item_taste[item_idx]).sum(-1)
        return response.affinity_logit(
            concept_match,
            self.item_pop_z[item_idx],
            self.creator_quality[self.item_creator[item_idx]],
            self.user_bias[user_idx],
            taste_match,
        )

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
        rng = stream_rng(self.cfg.seed, STREAM_WORLD, 1)
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
        tints the background; position jitter and pixel noise on top. Production quality
        follows the item's hidden appeal (``_media_appeal``): appealing items have clean,
        contrasted images, unappealing ones noisy, washed-out ones, as real thumbnails do."""
        from PIL import Image

        s, n, k = self.cfg.image_size, self.num_items, self.cfg.num_concepts
        rng = stream_rng(self.cfg.seed, STREAM_WORLD, 2)
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
        quality = 1.0 / (1.0 + np.exp(-self._media_appeal(rng)))  # (n,) in (0, 1)
        contrast = (0.5 + 0.5 * quality)[:, None, None, None]
        img = 128.0 + (img - 128.0) * contrast
        img = (
            img
            + rng.normal(0.0, 1.0, img.shape) * (4.0 + 24.0 * (1.0 - quality))[:, None, None, None]
        )
        pixels = img.clip(0, 255).astype(np.uint8)
        out = []
        for i in range(n):  # per item: PNG encoding
            buf = io.BytesIO()
            Image.fromarray(pixels[i], "RGB").save(buf, format="PNG", compress_level=1)
            out.append(buf.getvalue())
        return out

    def _audio(self) -> np.ndarray:
        """``(I, audio_dim)``: the weight-mix of concept prototypes, a component along one
        "appeal" direction that follows the hidden appeal (``_media_appeal``), a projection of
        the hidden taste factors (when ``taste_dim > 0``), plus noise."""
        rng = stream_rng(self.cfg.seed, STREAM_WORLD, 3)
        proto = rng.normal(0.0, 1.0, (self.cfg.num_concepts, self.cfg.audio_dim))
        mix = (proto[self.item_concepts] * self.item_weights[..., None]).sum(1)
        noise = rng.normal(0.0, 0.5, mix.shape)
        direction = rng.normal(0.0, 1.0, self.cfg.audio_dim)
        mix = mix + 0.4 * self._media_appeal(rng)[:, None] * direction[None, :]
        if self.cfg.taste_dim:
            t = self.cfg.taste_dim
            proj = rng.normal(0.0, 1.0, (t, self.cfg.audio_dim)) / np.sqrt(t)
            taste = self.item_taste / (self.item_taste.std() + 1e-12)
            mix = mix + 0.5 * taste @ proj
        return mix + noise

    def _media_appeal(self, rng: np.random.Generator) -> np.ndarray:
        """``(I,)`` the item's hidden appeal as its media show it: standardised log popularity
        plus its creator's quality (in popularity units), seen through noise (std 0.5), so media
        hint at, but do not reveal, how well an item will do."""
        quality = self.creator_quality[self.item_creator] / 0.3
        appeal = (self.item_pop_z + 0.5 * quality) / np.sqrt(1.25)
        return appeal + rng.normal(0.0, 0.5, self.num_items)


def _schema_with(schema: pa.Schema, extra_strings: list[str]) -> pa.Schema:
    for name in extra_strings:
        schema = schema.append(pa.field(name, pa.string(), nullable=False))
    return schema


def _tastes(cfg: SimulatorConfig, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Hidden taste factors ``(U, T)``, ``(I, T)``: entries ``N(0, s)`` with ``s**2 =
    taste_weight / sqrt(T)``, so ``taste_u . taste_i`` has mean 0 and std ``taste_weight``.
    Own random stream: turning taste on leaves every other draw of the world unchanged."""
    t = cfg.taste_dim
    rng = stream_rng(cfg.seed, STREAM_WORLD, 4)
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

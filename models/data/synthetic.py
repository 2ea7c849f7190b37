"""A synthetic shop for the demo and the tests: products with real-looking text, users with tastes.

Each user secretly likes one or two categories; their events mostly touch those. Product text
names its category's vocabulary, so a text encoder can place products near their kind: a
recommender that learns tastes from events beats random lists by a wide, measurable margin.

>>> world = SyntheticWorld(seed=1, n_items=40, n_users=5, n_categories=4)
>>> len(world.items(ts=0.0)), len(world.user_ids())
(40, 5)
>>> events = world.events(100, start_ts=1_700_000_000.0)
>>> liked = sum(world.category_of(e.item_id) in world.favourite_categories(e.user_id) for e in events)
>>> liked > 70
True
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from streamrec.models.data.log import ORDER_RULE, EventLog, stream_order
from streamrec.stream.messages import Event, Item

FAVOURITE_PROBABILITY = 0.85  # an event touches one of the user's favourite categories
TYPE_PROBABILITIES = (("view", 0.75), ("click", 0.20), ("purchase", 0.05))


@dataclass(frozen=True)
class Category:
    name: str
    nouns: tuple[str, ...]
    adjectives: tuple[str, ...]
    brands: tuple[str, ...]


CATEGORIES: tuple[Category, ...] = (
    Category("Running shoes", ("trail running shoe", "road running sneaker", "marathon racing flat", "cushioned jogging trainer"),
             ("lightweight", "breathable", "waterproof", "responsive"), ("Stridex", "Trailblaze", "Paceline")),
    Category("Coffee", ("single-origin coffee beans", "espresso roast", "cold brew coffee blend", "ground filter coffee"),
             ("dark roast", "fruity", "organic", "smooth"), ("Roastwell", "Highland", "Bean & Co")),
    Category("Skincare", ("hydrating face serum", "mineral sunscreen", "gentle foaming cleanser", "night moisturiser cream"),
             ("fragrance-free", "vitamin C", "hyaluronic", "soothing"), ("Dermaleaf", "Purely", "Glowa")),
    Category("Camping gear", ("two-person dome tent", "down sleeping bag", "camping stove", "inflatable sleeping pad"),
             ("ultralight", "four-season", "compact", "weatherproof"), ("Summitline", "Basecamp", "Wildfern")),
    Category("Board games", ("cooperative strategy board game", "party card game", "deck-building game", "family dice game"),
             ("award-winning", "two-player", "fast-paced", "classic"), ("Meeple Works", "Tabletop Co", "Rollhouse")),
    Category("Kitchen knives", ("chef's knife", "santoku knife", "serrated bread knife", "paring knife set"),
             ("Damascus steel", "forged", "razor-sharp", "Japanese-style"), ("Kirisaki", "Edgecraft", "Blademoor")),
    Category("Headphones", ("noise-cancelling headphones", "wireless earbuds", "studio monitor headphones", "bone-conduction headset"),
             ("over-ear", "Bluetooth", "hi-fi", "sweat-proof"), ("Sonora", "Auralis", "Beatline")),
    Category("Yoga", ("non-slip yoga mat", "cork yoga block", "cotton yoga strap", "meditation cushion"),
             ("eco-friendly", "extra-thick", "travel", "grippy"), ("Lotusfield", "Asana Lab", "Calmcore")),
)


class SyntheticWorld:
    """A deterministic catalogue and population; the same seed gives the same world."""

    def __init__(self, seed: int = 7, n_items: int = 400, n_users: int = 200, n_categories: int = 8) -> None:
        if not 1 <= n_categories <= len(CATEGORIES):
            raise ValueError(f"n_categories must be within 1..{len(CATEGORIES)}")
        self.seed = seed
        rng = random.Random(seed)
        self.categories = CATEGORIES[:n_categories]
        self._items: list[tuple[str, str, str, str]] = []  # (item_id, title, category, text)
        self._category_of: dict[str, str] = {}
        self._by_category: dict[str, list[str]] = {c.name: [] for c in self.categories}
        for n in range(n_items):
            category = self.categories[n % n_categories]
            model = f"{category.name[0]}{100 + n // n_categories}"  # makes every title unique
            title = f"{rng.choice(category.brands)} {model} {rng.choice(category.adjectives)} {rng.choice(category.nouns)}"
            text = f"{title}. Category: {category.name}."
            item_id = f"i{n:05d}"
            self._items.append((item_id, title, category.name, text))
            self._category_of[item_id] = category.name
            self._by_category[category.name].append(item_id)
        self._tastes: dict[str, frozenset[str]] = {}
        for n in range(n_users):
            k = 1 if rng.random() < 0.5 or n_categories == 1 else 2
            self._tastes[f"u{n:04d}"] = frozenset(rng.sample([c.name for c in self.categories], k))

    def items(self, ts: float) -> list[Item]:
        return [
            Item(item_id=item_id, text=text, attributes={"title": title, "category": category}, ts=ts)
            for item_id, title, category, text in self._items
        ]

    def switch_tastes(self, seed: int = 1) -> None:
        """A planted change of taste: every user now favours categories they did not before.

        >>> world = SyntheticWorld(seed=1, n_items=40, n_users=5, n_categories=4)
        >>> before = {u: world.favourite_categories(u) for u in world.user_ids()}
        >>> world.switch_tastes()
        >>> all(not before[u] & world.favourite_categories(u) for u in world.user_ids())
        True
        """
        rng = random.Random(f"{self.seed}-switch-{seed}")
        names = [c.name for c in self.categories]
        for user, old in self._tastes.items():
            fresh = [name for name in names if name not in old] or names
            self._tastes[user] = frozenset(rng.sample(fresh, min(len(old), len(fresh))))

    def user_ids(self) -> list[str]:
        return list(self._tastes)

    def favourite_categories(self, user_id: str) -> set[str]:
        return set(self._tastes.get(user_id, ()))

    def category_of(self, item_id: str) -> str:
        return self._category_of[item_id]

    def events(self, n: int, start_ts: float, rate_per_s: float = 50.0, stream: int = 0) -> list[Event]:
        """`n` time-ordered events from `start_ts`, `rate_per_s` apart on average.

        Different `stream` numbers give different (still deterministic) event sequences.
        """
        rng = random.Random(f"{self.seed}-events-{stream}")
        users = self.user_ids()
        all_items = [item[0] for item in self._items]
        kinds, weights = zip(*TYPE_PROBABILITIES)
        out = []
        ts = start_ts
        for k in range(n):
            user = rng.choice(users)
            if rng.random() < FAVOURITE_PROBABILITY:
                category = rng.choice(sorted(self._tastes[user]))
                item = rng.choice(self._by_category[category])
            else:
                item = rng.choice(all_items)
            out.append(
                Event(
                    event_id=f"syn-{self.seed}-{stream}-{k}",
                    user_id=user,
                    item_id=item,
                    type=rng.choices(kinds, weights)[0],
                    ts=round(ts, 6),
                )
            )
            ts += rng.expovariate(rate_per_s)
        return out


def read_synthetic(
    seed: int = 7, n_events: int = 20_000, n_items: int = 400, n_users: int = 200
) -> EventLog:
    """The synthetic shop as a dataset (what `streamrec evaluate --dataset synthetic` replays).

    >>> log = read_synthetic(seed=1, n_events=50, n_items=16, n_users=4)
    >>> log.description["n_events"], len(log.item_text) <= 16
    (50, True)
    """
    world = SyntheticWorld(seed=seed, n_items=n_items, n_users=n_users)
    events = stream_order(world.events(n_events, start_ts=1_700_000_000.0))
    used = {event.item_id for event in events}
    items = {item.item_id: item for item in world.items(ts=0.0) if item.item_id in used}
    log = EventLog(
        "synthetic",
        events,
        {item_id: item.text for item_id, item in items.items()},
        {item_id: str((item.attributes or {})["title"]) for item_id, item in items.items()},
    )
    log.description = {"dataset": "synthetic", "seed": seed, **log.counts(),
                       "event_mapping": "generated view/click/purchase (75/20/5 %)", "order": ORDER_RULE}
    return log

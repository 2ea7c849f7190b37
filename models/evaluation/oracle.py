"""The ceiling of the synthetic shop: a recommender that knows every user's hidden tastes.

In `SyntheticWorld` an event touches one of the user's favourite categories (chosen uniformly)
with probability `FAVOURITE_PROBABILITY`, then an item of that category uniformly. With
consumed items left out of lists, the best list puts its slots where an event is most likely
to land on an unconsumed item: the favourite category with the fewest unconsumed items per
unit of probability, then the next. Nothing learned can beat it on average, so its HR@K is
the ceiling the generator allows.

>>> oracle = TasteOracle({"u": {"A"}}, {"a1": "A", "a2": "A", "b1": "B"})
>>> oracle.learn([type("E", (), {"user_id": "u", "item_id": "a1"})()])
>>> oracle.recommend(["u", "stranger"], k=2)
[['a2'], []]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from streamrec.stream.messages import Event


class TasteOracle:
    """Lists from the generator's hidden tastes (the synthetic shop only)."""

    name = "oracle (knows the hidden tastes)"

    def __init__(self, tastes: Mapping[str, set[str]], category_of: Mapping[str, str]) -> None:
        self.tastes = tastes
        self.by_category: dict[str, list[str]] = {}
        for item, category in sorted(category_of.items()):
            self.by_category.setdefault(category, []).append(item)
        self.consumed: dict[str, set[str]] = {}

    def learn(self, events: Sequence[Event]) -> None:
        for event in events:
            self.consumed.setdefault(event.user_id, set()).add(event.item_id)

    def recommend(self, user_ids: Sequence[str], k: int) -> list[list[str]]:
        return [self._best(user, k) for user in user_ids]

    def _best(self, user: str, k: int) -> list[str]:
        consumed = self.consumed.get(user, set())
        open_items = {
            category: [item for item in self.by_category.get(category, []) if item not in consumed]
            for category in sorted(self.tastes.get(user, ()))
        }
        # Each slot's chance to be hit: P(category) / unconsumed items in it; fill the best first.
        ranked = sorted(open_items, key=lambda c: (len(open_items[c]) or float("inf"), c))
        return [item for category in ranked for item in open_items[category]][:k]


def synthetic_oracle(seed: int, n_items: int = 400, n_users: int = 200) -> TasteOracle:
    """The oracle of the world `read_synthetic(seed, ...)` generates (same defaults)."""
    from streamrec.models.data.synthetic import SyntheticWorld

    world = SyntheticWorld(seed=seed, n_items=n_items, n_users=n_users)
    tastes = {user: world.favourite_categories(user) for user in world.user_ids()}
    return TasteOracle(tastes, {item.item_id: world.category_of(item.item_id) for item in world.items(ts=0.0)})

"""One fine-tuning cycle: learns a planted change of taste, leaves the served model alone, decides.

A small `SyntheticWorld` shop (80 items in 4 categories, 40 users) with made-up text vectors:
a category direction plus noise (no MiniLM in unit tests). The planted change is one a
sequence model cannot follow from the history alone: before it, a user's next item is mostly
in the category of their last one ("more of the same"); halfway through the window tastes
move on, and the next item is mostly in the *next* category. (The world's own
`switch_tastes` would not do here: a changed favourite shows in the history, and the served
model follows it without any fine-tuning.)
"""

from __future__ import annotations

import copy
import json
import math
import random
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch

from streamrec.models.data.synthetic import SyntheticWorld
from streamrec.models.learning.finetune import CycleReport, FineTuneConfig, fine_tune, holdout_cases
from streamrec.models.learning.item_table import ItemTable
from streamrec.models.learning.ranker import Ranker, RankerConfig, Step
from streamrec.models.learning.training import TrainConfig, make_windows, train_ranker, train_steps
from streamrec.models.learning.window import split_newest
from streamrec.stream.messages import Event

MODEL = RankerConfig(
    text_dim=16, dim=16, max_len=10, layers=1, heads=2, id_buckets=512, dropout=0.1
)
CYCLE = FineTuneConfig(steps=80, batch_size=32, negatives=64, lr=3e-3, min_events=100)
CPU = torch.device("cpu")
STICKY = 0.9  # share of events that follow the regime's rule; the rest are random items


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models: on a shared two-core CPU, a second torch thread only adds waiting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass
class Shop:
    world: SyntheticWorld
    table: ItemTable
    by_category: list[list[str]]  # item ids of each category


@pytest.fixture(scope="module")
def shop() -> Shop:
    world = SyntheticWorld(seed=3, n_items=80, n_users=40, n_categories=4)
    names = [c.name for c in world.categories]
    items = [item.item_id for item in world.items(ts=0.0)]
    rng = np.random.default_rng(0)
    vectors = rng.normal(0, 0.3, (len(items), MODEL.text_dim)).astype(np.float32)  # (N, T)
    by_category: list[list[str]] = [[] for _ in names]
    for row, item in enumerate(items):
        category = names.index(world.category_of(item))
        vectors[row, category] += 2.0  # the text says what kind of thing it is
        by_category[category].append(item)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return Shop(world, ItemTable.from_vectors(items, vectors, MODEL.id_buckets), by_category)


def _events(
    shop: Shop, n: int, start_ts: float, move_on: int, seed: int, last: dict[str, int] | None = None
) -> tuple[list[Event], dict[str, int]]:
    """`n` events one second apart; a user's next category is their last one + `move_on`.

    Returns the events and each user's last category (to carry on from in a later call).
    """
    rng = random.Random(seed)
    last = dict(last or {})
    users, categories = shop.world.user_ids(), len(shop.by_category)
    out = []
    for k in range(n):
        user = rng.choice(users)
        category = last.get(user, rng.randrange(categories))
        category = (
            (category + move_on) % categories
            if rng.random() < STICKY
            else rng.randrange(categories)
        )
        last[user] = category
        out.append(
            Event(
                event_id=f"e{seed}-{k}",
                user_id=user,
                item_id=rng.choice(shop.by_category[category]),
                type=rng.choice(["view", "view", "view", "click", "purchase"]),
                ts=start_ts + k,
            )
        )
    return out, last


@dataclass
class Story:
    served: Ranker  # trained on "more of the same"
    unchanged: list[Event]  # a window in which nothing changed
    changed: list[Event]  # a window whose second half moved on


@pytest.fixture(scope="module")
def story(shop: Shop) -> Story:
    before, last = _events(shop, 1_500, 0.0, move_on=0, seed=1)
    sequences: dict[str, list[Step]] = defaultdict(list)
    for e in before:
        sequences[e.user_id].append(Step(e.item_id, e.type, e.ts))
    torch.manual_seed(0)
    served = Ranker(MODEL)
    windows = make_windows(sequences, shop.table, MODEL.max_len, MODEL.gap_buckets)
    train_ranker(
        served,
        shop.table,
        windows,
        TrainConfig(epochs=10, batch_size=32, negatives=64, lr=3e-3),
        CPU,
        progress=False,
    )
    unchanged, _ = _events(shop, 1_500, 2_000.0, move_on=0, seed=2, last=last)
    first_half, last_half = _events(shop, 750, 2_000.0, move_on=0, seed=2, last=last)
    second_half, _ = _events(shop, 750, 2_750.0, move_on=1, seed=3, last=last_half)
    return Story(served.eval(), unchanged, first_half + second_half)


def _first_times(train: list[Event], holdout: list[Event]) -> list[Event]:
    """Held-out events whose item the user has not consumed before (serving could hit those)."""
    seen = {(e.user_id, e.item_id) for e in train}
    out = []
    for event in holdout:
        if (event.user_id, event.item_id) not in seen:
            out.append(event)
        seen.add((event.user_id, event.item_id))
    return out


def _weights(model: Ranker) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_change_of_taste_is_learned_and_published(shop: Shop, story: Story) -> None:
    _, report = fine_tune(story.served, shop.table, story.changed, CYCLE, CPU)
    assert (report.window_events, report.train_events) == (1_500, 1_200)
    assert report.steps == CYCLE.steps and report.loss is not None and math.isfinite(report.loss)
    # every held-out user has a history in the window; repeats of a consumed item are no case
    assert report.holdout_events == len(_first_times(story.changed[:1_200], story.changed[1_200:]))
    # The newest slice is all "moved on": the served model still expects more of the same.
    assert report.serving["hr@10"] < 0.15, report
    assert report.candidate["hr@10"] > report.serving["hr@10"] + 0.3, report
    assert report.candidate["ndcg@10"] > report.serving["ndcg@10"]
    assert report.accepted and report.reason.startswith("hr@10 ") and " >= " in report.reason
    assert report.steps_per_s > 0 and report.seconds > 0


def test_the_served_model_is_left_alone(shop: Shop, story: Story) -> None:
    served = copy.deepcopy(story.served).train()  # in train mode: evaluation must not flip it
    before = _weights(served)
    candidate, report = fine_tune(served, shop.table, story.changed, replace(CYCLE, steps=10), CPU)
    assert report.steps == 10
    assert _same(_weights(served), before) and served.training
    assert candidate is not served and not candidate.training
    assert not _same(_weights(candidate), before)
    served_storage = {p.data_ptr() for p in served.parameters()}
    assert not served_storage & {p.data_ptr() for p in candidate.parameters()}


def test_seeded_cycles_repeat(shop: Shop, story: Story) -> None:
    config = replace(CYCLE, steps=20)
    first, report = fine_tune(story.served, shop.table, story.changed, config, CPU)
    again, report_again = fine_tune(story.served, shop.table, story.changed, config, CPU)
    timing = {"seconds", "steps_per_s"}
    figures = {k: v for k, v in report.to_dict().items() if k not in timing}
    assert figures == {k: v for k, v in report_again.to_dict().items() if k not in timing}
    assert _same(_weights(first), _weights(again))
    _, other_seed = fine_tune(story.served, shop.table, story.changed, replace(config, seed=1), CPU)
    assert other_seed.loss != report.loss


def test_the_margin_decides(shop: Shop, story: Story) -> None:
    quick = replace(CYCLE, steps=5)
    _, lenient = fine_tune(
        story.served, shop.table, story.unchanged, replace(quick, margin=1.0), CPU
    )
    _, strict = fine_tune(
        story.served, shop.table, story.unchanged, replace(quick, margin=-1.0), CPU
    )
    assert lenient.candidate == strict.candidate and lenient.serving == strict.serving  # same cycle
    assert lenient.accepted and lenient.reason.endswith(" - 1.0000")  # anything goes
    assert not strict.accepted and " < " in strict.reason and strict.reason.endswith(" + 1.0000")
    # The decision follows the formula: candidate >= serving - margin.
    for report, margin in ((lenient, 1.0), (strict, -1.0)):
        assert report.accepted == (report.candidate["hr@10"] >= report.serving["hr@10"] - margin)


def test_too_few_events_is_no_cycle(shop: Shop, story: Story) -> None:
    candidate, report = fine_tune(story.served, shop.table, story.changed[:99], CYCLE, CPU)
    assert not report.accepted and report.steps == 0 and report.loss is None
    assert report.reason == "window has 99 events, fewer than min_events 100"
    assert (report.window_events, report.holdout_events, report.candidate) == (99, 0, {})
    assert candidate is not story.served and _same(_weights(candidate), _weights(story.served))


def test_nothing_to_learn_from_is_not_published(shop: Shop, story: Story) -> None:
    loners = [
        e.model_copy(update={"user_id": f"once-{n}"}) for n, e in enumerate(story.changed[:200])
    ]
    _, report = fine_tune(story.served, shop.table, loners, CYCLE, CPU)  # one event per user
    assert (report.steps, report.holdout_events, report.accepted) == (0, 0, False)
    assert report.reason.startswith("no training step")


def test_items_the_table_does_not_know_are_skipped(shop: Shop, story: Story) -> None:
    rng = random.Random(0)
    window = [  # one event in four is about an item the catalogue has not seen yet
        e.model_copy(update={"item_id": f"new-{n}"}) if rng.random() < 0.25 else e
        for n, e in enumerate(story.changed)
    ]
    train, holdout = split_newest(window, CYCLE.holdout_fraction)
    cases = holdout_cases(train, holdout, shop.table)
    known_targets = [e for e in _first_times(train, holdout) if e.item_id in shop.table.row_of]
    assert 0 < len(cases) == len(known_targets)  # every user has known history here
    for user, history, target in cases:
        assert target.item_id in shop.table.row_of
        assert history == [  # the whole window before it: older part and earlier held-out events
            Step(e.item_id, e.type, e.ts) for e in window if e.user_id == user and e.ts < target.ts
        ]
    _, report = fine_tune(story.served, shop.table, window, replace(CYCLE, steps=5), CPU)
    assert report.holdout_events == len(cases) and report.steps == 5


def test_train_steps_takes_exactly_the_steps_asked_for(shop: Shop, story: Story) -> None:
    sequences: dict[str, list[Step]] = defaultdict(list)
    for e in story.changed[:300]:
        sequences[e.user_id].append(Step(e.item_id, e.type, e.ts))
    windows = make_windows(sequences, shop.table, MODEL.max_len, MODEL.gap_buckets)
    config = TrainConfig(batch_size=len(windows) // 2 + 1, negatives=32, epochs=1, max_steps=1)
    model = copy.deepcopy(story.served)
    result = train_steps(model, shop.table, windows, 7, config, CPU)  # two steps an epoch
    assert result.steps == 7 and [e["steps"] for e in result.epochs] == [2, 4, 6, 7]
    assert result.loss is not None and not model.training
    with pytest.raises(ValueError, match="steps"):
        train_steps(model, shop.table, windows, 0, config, CPU)


def test_config_and_report() -> None:
    for bad in ({"monitor": "hr@5"}, {"holdout_fraction": 1.0}, {"steps": 0}):
        with pytest.raises(ValueError):
            FineTuneConfig(**bad)
    assert FineTuneConfig(monitor="ndcg@5", k=5).monitor == "ndcg@5"
    report = CycleReport(parent_version="v1", candidate={"hr@10": 0.5}, reason="why")
    assert json.loads(json.dumps(report.to_dict()))["candidate"] == {"hr@10": 0.5}

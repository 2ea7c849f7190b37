"""What to serve, decided by the `model-updates` topic: a pure fold over its messages.

Every worker reads the whole topic (a broadcast, from the beginning at start), folds each
message into a `ServingPlan` and swaps to whatever the plan names. Folding the same messages
gives every worker, and a restarted one, the same plan: pins and rollbacks survive restarts.

Rules, message by message (`ModelUpdate.action`):
- `publish V`: the newest version. Served at once, unless a version is pinned (then only
  remembered) or canaries are on (then V becomes the canary).
- `canary V`: serve V to the canary share of users, the main version to the rest.
- `promote V`: everyone gets V; any canary ends (a rejected canary is `promote <main>`).
- `pin V` / `rollback V`: serve V, ignore publishes, end any canary, until `unpin`.
- `unpin V`: serve V (the newest, named by the sender) and follow publishes again.

>>> control = ModelControl(canaries=False)
>>> control.apply(update("publish", "v1")).main.version
'v1'
>>> control.apply(update("pin", "v1")).main.version, control.apply(update("publish", "v2")).main.version
('v1', 'v1')
>>> control.apply(update("unpin", "v2")).main.version
'v2'
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from streamrec.stream.messages import ModelUpdate


@dataclass(frozen=True)
class Target:
    """One version to serve and what it must verify against."""

    version: str
    sha256: str | None = None  # None: no message vouched for it (a version pinned in settings)
    created_at: float | None = None

    @classmethod
    def of(cls, update: ModelUpdate) -> Target:
        return cls(update.version, update.sha256, update.created_at)


@dataclass(frozen=True)
class ServingPlan:
    """The main version (None: whatever the store's newest is) and an optional canary."""

    main: Target | None = None
    canary: Target | None = None
    pinned: bool = False
    newest: Target | None = None


@dataclass
class ModelControl:
    """Folds `model-updates` messages into a `ServingPlan` (see the module docstring)."""

    canaries: bool = False  # a published version goes to the canary share first
    plan: ServingPlan = field(default_factory=ServingPlan)

    @classmethod
    def pinned_to(cls, version: str | None, canaries: bool = False) -> ModelControl:
        """Start from a version pinned in the settings (STREAMREC_MODEL_VERSION), if any."""
        plan = ServingPlan(main=Target(version), pinned=True) if version else ServingPlan()
        return cls(canaries=canaries, plan=plan)

    def apply(self, message: ModelUpdate) -> ServingPlan:
        plan, target = self.plan, Target.of(message)
        action = message.action
        if action == "publish":
            plan = replace(plan, newest=target)
            if plan.pinned:
                pass  # remembered as the newest; `unpin` serves it
            elif self.canaries and plan.main is not None:
                plan = replace(plan, canary=target)
            else:
                plan = replace(plan, main=target, canary=None)
        elif action == "canary":
            plan = replace(plan, canary=target)
        elif action == "promote":
            plan = replace(plan, main=target, canary=None)
        elif action in ("pin", "rollback"):
            plan = replace(plan, main=target, canary=None, pinned=True)
        elif action == "unpin":
            plan = replace(plan, main=target, canary=None, pinned=False, newest=target)
        self.plan = plan
        return plan

    def apply_all(self, messages: Iterable[ModelUpdate]) -> ServingPlan:
        for message in messages:
            self.apply(message)
        return self.plan


@dataclass
class CanaryJudge:
    """Promote the canary when its online hit-rate is not worse than the main version's.

    Decides once both arms have seen `min_events` events of users served by them.

    >>> judge = CanaryJudge(main="v1", canary="v2", min_events=2, margin=0.0)
    >>> judge.observe([("v1", True), ("v1", False), ("v2", True)]) is None
    True
    >>> judge.observe([("v2", False)])
    'promote'
    """

    main: str
    canary: str
    min_events: int = 200
    margin: float = 0.0  # promote if canary_rate >= main_rate - margin
    events: Counter[str] = field(default_factory=Counter)
    hits: Counter[str] = field(default_factory=Counter)

    def observe(self, outcomes: Sequence[tuple[str, bool]]) -> str | None:
        """Count (version, hit) pairs; "promote" or "reject" once decided, else None."""
        for version, hit in outcomes:
            if version in (self.main, self.canary):
                self.events[version] += 1
                self.hits[version] += int(hit)
        if min(self.events[self.main], self.events[self.canary]) < self.min_events:
            return None
        return "promote" if self.rate(self.canary) >= self.rate(self.main) - self.margin else "reject"

    def rate(self, version: str) -> float:
        return self.hits[version] / self.events[version] if self.events[version] else 0.0

    def report(self) -> dict[str, dict[str, float]]:
        """Both arms' figures, for logs and the decision message."""
        return {
            arm: {"events": float(self.events[v]), "hit_rate": self.rate(v)}
            for arm, v in (("main", self.main), ("canary", self.canary))
        }


def update(action: str, version: str, sha256: str = "0" * 64, created_at: float = 0.0) -> ModelUpdate:
    """A `ModelUpdate` for examples and tests."""
    return ModelUpdate(
        version=version, uri=f"file:///models/{version}", sha256=sha256, created_at=created_at,
        action=action,  # type: ignore[arg-type]
    )

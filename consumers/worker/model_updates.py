"""Hot swap: every worker follows `model-updates` and swaps versions between micro-batches.

Broadcast, not a consumer group: each worker assigns itself every partition of the topic and
reads it from the beginning, so each one sees every message, and a restarted worker folds the
whole history (pins and rollbacks included) into the same `ServingPlan` as the others.

A swap loads the version off the serving path (in a thread: read, verify sha256, shapes and
finite weights, build the version's retrieval vectors), then replaces the scorer on the event
loop, between two micro-batches: output never pauses. A bad update is refused and counted,
and the worker keeps serving the last good version.

A refusal that the store or the index may outgrow (`RETRIED_REASONS`: the version's files
missing or unreadable, weights that do not match the update's sha256 yet, e.g. still being
copied, the Qdrant server away) is tried again after `model_retry_s`, then at doubling
intervals (at most `MODEL_RETRY_MAX_S`), for as long as the plan still names that version;
each try is counted as `action="retry"`. Bad weights (NaN, wrong shapes or config, a file
that matches its checksum but does not parse) are refused for good.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace

from streamrec.consumers.worker.metrics import WorkerMetrics
from streamrec.models.core.device import select_device
from streamrec.models.core.pipeline import Pipeline
from streamrec.models.core.recommender import Canary, OnlineOutcome, Recommender
from streamrec.models.core.scoring import Scorer
from streamrec.models.index.factory import retrieval_index_opener
from streamrec.models.index.protocol import IndexUnavailableError, ItemIndex
from streamrec.models.learning.control import CanaryJudge, ModelControl, ServingPlan, Target
from streamrec.models.learning.serving import RankerScorer, open_scorer
from streamrec.models.learning.store import DirectoryModelStore, ModelStoreError
from streamrec.stream.messages import ModelUpdate
from streamrec.stream.model_updates import catch_up, parse_updates, update_for
from streamrec.stream.readers import open_broadcast_reader
from streamrec.stream.settings import Settings

log = logging.getLogger(__name__)

Publish = Callable[[ModelUpdate], Awaitable[None]]
#: Refusals tried again later: the store or the index may be readable then.
RETRIED_REASONS = frozenset({"unreadable", "unknown_version", "checksum", "index_unavailable"})
MODEL_RETRY_MAX_S = 600.0  # longest wait between two tries of a refused version (s)


class ModelSwapper:
    """Turns `ServingPlan`s into the scorers the pipeline serves with."""

    def __init__(
        self, settings: Settings, pipeline: Pipeline, metrics: WorkerMetrics, publish: Publish | None = None
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.metrics = metrics
        self.publish = publish  # sends a decision (canary promote/reject) to model-updates
        self.store = DirectoryModelStore(settings.resolved_model_dir)
        self.control = ModelControl.pinned_to(settings.model_version, canaries=settings.canary_fraction > 0)
        self.device = select_device(settings.device)
        # Held while catalogue items are written, and while a version's retrieval vectors are
        # built from the text index: no item lands between the scan and the swap unindexed.
        self.catalog_lock = asyncio.Lock()
        self.judge: CanaryJudge | None = None
        self._swapping = asyncio.Lock()
        self._cleanups: set[asyncio.Future[None]] = set()
        self._retry: asyncio.Future[None] | None = None  # a refused plan, tried again later

    @property
    def recommender(self) -> Recommender:
        return self.pipeline.recommender

    # --- messages ----------------------------------------------------------------------
    async def on_update(self, update: ModelUpdate) -> None:
        """Fold one message into the plan and serve what it says."""
        await self.serve(self.control.apply(update), update.action)

    async def serve(self, plan: ServingPlan, action: str) -> tuple[str, str]:
        """Reconcile with `plan`, count the outcome under `action`, and when refused for a
        reason the store may outgrow, try again later (`RETRIED_REASONS`)."""
        outcome, reason = await self.reconcile(plan)
        self.metrics.model_updates.labels(action=action, outcome=outcome, reason=reason).inc()
        if outcome == "refused" and reason in RETRIED_REASONS:
            self._retry_later(plan)
        return outcome, reason

    def _retry_later(self, plan: ServingPlan) -> None:
        if self._retry is not None and not self._retry.done():
            self._retry.cancel()  # the newer refusal's plan is the one to retry
        self._retry = asyncio.ensure_future(self._retry_loop(plan))
        self._retry.add_done_callback(_log_failure)

    async def _retry_loop(self, plan: ServingPlan) -> None:
        delay = self.settings.model_retry_s
        while True:
            log.info("trying the refused model plan again in %.0f s", delay)
            await asyncio.sleep(delay)
            current = self.control.plan
            if (current.main, current.canary) != (plan.main, plan.canary):
                return  # a newer message changed the plan: it was reconciled then
            outcome, reason = await self.reconcile(current)
            self.metrics.model_updates.labels(action="retry", outcome=outcome, reason=reason).inc()
            if outcome != "refused" or reason not in RETRIED_REASONS:
                return
            delay = min(delay * 2, MODEL_RETRY_MAX_S)

    def on_invalid(self, error: str) -> None:
        log.warning("ignoring an unreadable model-updates message: %s", error)
        self.metrics.model_updates.labels(action="unknown", outcome="refused", reason="invalid_message").inc()

    async def reconcile(self, plan: ServingPlan) -> tuple[str, str]:
        """Swap main and canary scorers to match `plan`; ("swapped"|"unchanged"|"refused", reason)."""
        async with self._swapping:
            outcome, reason = "unchanged", ""
            recommender = self.recommender
            canary = recommender.canary
            if plan.main is not None and plan.main.version != recommender.scorer.version:
                if canary is not None and canary.scorer.version == plan.main.version:
                    recommender.canary = None  # promoted: the canary's scorer serves everyone
                    self._install_main(canary.scorer, plan.main)
                    outcome = "swapped"
                else:
                    scorer, reason = await self._load(plan.main)
                    if scorer is None:
                        return "refused", reason
                    self._install_main(scorer, plan.main)
                    outcome = "swapped"
            wanted = plan.canary
            if wanted is not None and wanted.version == recommender.scorer.version:
                wanted = None
            canary = recommender.canary
            if wanted is None and canary is not None:
                recommender.canary = None
                self.judge = None
                self._retire(canary.scorer)
                outcome = "swapped"
            elif wanted is not None and (canary is None or canary.scorer.version != wanted.version):
                scorer, reason = await self._load(wanted)
                if scorer is None:
                    return "refused", reason
                recommender.canary = Canary(scorer, self.settings.canary_fraction)
                self.judge = CanaryJudge(
                    main=recommender.scorer.version,
                    canary=scorer.version,
                    min_events=self.settings.canary_min_events,
                    margin=self.settings.canary_margin,
                )
                if canary is not None:
                    self._retire(canary.scorer)
                log.info("canary %s serves %.0f%% of users", scorer.version, 100 * self.settings.canary_fraction)
                outcome = "swapped"
            return outcome, reason

    # --- canary --------------------------------------------------------------------------
    def observe(self, outcomes: Sequence[OnlineOutcome]) -> None:
        """Feed the canary judge; once it decides, tell every worker through the topic."""
        judge = self.judge
        if judge is None:
            return
        decision = judge.observe([(o.model_version, o.hit) for o in outcomes])
        if decision is None:
            return
        self.judge = None
        winner = judge.canary if decision == "promote" else judge.main
        log.info("canary %s: %s (%s)", judge.canary, decision, judge.report())
        figures = {f"{arm}_{k}": v for arm, arm_figures in judge.report().items() for k, v in arm_figures.items()}
        update = update_for(self.store, winner, "promote", figures)
        if self.publish is not None:
            task = asyncio.ensure_future(self.publish(update))
            task.add_done_callback(_log_failure)

    # --- loading and swapping ---------------------------------------------------------------
    async def _load(self, target: Target) -> tuple[RankerScorer | None, str]:
        started = time.perf_counter()
        try:
            async with self.catalog_lock:
                scorer = await asyncio.to_thread(self._open, target)
        except ModelStoreError as exc:
            log.warning("refusing model %s (%s): %s", target.version, exc.reason, exc)
            return None, exc.reason
        except IndexUnavailableError as exc:  # its retrieval vectors cannot be built now
            log.warning("refusing model %s (index_unavailable): %s", target.version, exc)
            return None, "index_unavailable"
        except Exception as exc:  # an unreadable index or file: refuse, keep serving
            log.exception("refusing model %s: %s", target.version, exc)
            return None, "unreadable"
        self.metrics.model_swap_seconds.observe(time.perf_counter() - started)
        return scorer, ""

    def _open(self, target: Target) -> RankerScorer:
        settings = self.settings
        scorer = open_scorer(
            self.store,
            target.version,
            self.pipeline.index,
            retrieval_index_opener(settings),
            settings.collection,
            self.device,
            expected_sha256=target.sha256,
        )
        assert scorer is not None  # a version was named
        return scorer

    def _install_main(self, scorer: Scorer, target: Target) -> None:
        old = self.recommender.scorer
        self.recommender.scorer = scorer  # on the event loop: between two micro-batches
        self.metrics.model_swaps.inc()
        created = target.created_at
        if created is None and isinstance(scorer, RankerScorer):
            created = scorer.manifest.created.timestamp()
        self.metrics.set_model_version(scorer.version, created)
        if created is not None:
            self.metrics.model_update_delay.observe(max(0.0, time.time() - created))
        log.info("now serving %s (was %s)", scorer.version, old.version)
        if old is not scorer:
            self._retire(old)

    def _retire(self, scorer: Scorer) -> None:
        """Free an old version's retrieval vectors (rebuilt in about a second if it returns)."""
        canary = self.recommender.canary
        if scorer is self.recommender.scorer or (canary is not None and scorer is canary.scorer):
            return
        retrieval = getattr(scorer, "retrieval", None)
        if retrieval is not None:  # deleting 10k vectors takes a moment: not on the event loop
            task = asyncio.ensure_future(asyncio.to_thread(_drop, retrieval, scorer.version))
            self._cleanups.add(task)
            task.add_done_callback(self._cleanups.discard)

    async def drain(self) -> None:
        """Wait for clean-ups still running (tests, shutdown)."""
        while self._cleanups:
            await asyncio.gather(*list(self._cleanups))

    def stop_retrying(self) -> None:
        """Cancel a pending retry of a refused plan (tests, shutdown)."""
        if self._retry is not None:
            self._retry.cancel()


def _drop(retrieval: ItemIndex, version: str) -> None:
    try:
        retrieval.drop()
    except Exception:  # never let clean-up break serving
        log.exception("could not drop the retrieval vectors of %s", version)


def _log_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("could not publish a canary decision: %s", task.exception())


async def follow_model_updates(settings: Settings, swapper: ModelSwapper, ready: asyncio.Event | None = None) -> None:
    """Read `model-updates` from the beginning, forever, without a consumer group.

    The history is folded first and served once (not version by version); then each new
    message is applied as it arrives.
    """
    consumer, tps = await open_broadcast_reader(settings, [settings.topics.model_updates])
    try:
        history = await catch_up(consumer, tps, swapper.on_invalid)
        if history:
            plan = swapper.control.apply_all(history)
            current = swapper.recommender.scorer
            if (  # a checkpoint saved after the last publish (e.g. `streamrec pretrain`) stays
                not plan.pinned
                and plan.main is not None
                and isinstance(current, RankerScorer)
                and current.manifest.created.timestamp() > (plan.main.created_at or 0.0)
            ):
                plan = replace(plan, main=Target(current.version, current.manifest.sha256))
                swapper.control.plan = plan
            await swapper.serve(plan, "replay")
            log.info("model-updates history: %d messages; serving %s", len(history), swapper.recommender.model_version)
        if ready is not None:
            ready.set()
        while True:
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                for update in parse_updates(records, swapper.on_invalid):
                    await swapper.on_update(update)
    finally:
        await consumer.stop()

"""The producer SDK for other services: validated events in, keyed by user id, onto the bus.

Example, from any asyncio service (runnable as pasted, with a broker at STREAMREC_BROKER)::

    import asyncio
    import time

    from streamrec.stream.messages import Event
    from streamrec.stream.producer import EventProducer
    from streamrec.stream.settings import Settings


    async def main() -> None:
        async with EventProducer(Settings()) as producer:   # STREAMREC_BROKER etc. from the env
            await producer.send_event(
                Event(event_id="e-123", user_id="u-7", item_id="sku-42", type="click", ts=time.time())
            )


    asyncio.run(main())

Sends are pipelined: `send_*` returns once the message is queued; `flush()` (and leaving the
context) waits until the broker has acknowledged everything (acks=all). Queued events wait up
to `STREAMREC_SDK_LINGER_MS` to travel together in one record batch per partition (up to
`STREAMREC_PRODUCER_BATCH_BYTES`): fewer, larger batches cost any broker less, and the embedded
Tansu's fetches slow with every batch a partition stores (docs/settings.md). A producer that runs
for hours without a flush holds only the deliveries still in flight: acknowledged ones are
dropped as it goes (and a failed one raises from the next send, as it would from `flush`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from types import TracebackType

from aiokafka import AIOKafkaProducer

from streamrec.stream.messages import Event, Item
from streamrec.stream.settings import Settings

SETTLE_EVERY = 10_000  # deliveries queued between two sweeps of the acknowledged ones


class EventProducer:
    """An async producer of contract messages (aiokafka underneath)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topics = settings.topics
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap_servers,
            acks="all",
            linger_ms=settings.sdk_linger_ms,
            max_batch_size=settings.producer_batch_bytes,
            **settings.kafka_client_options(),
        )
        self._pending: list[asyncio.Future] = []
        self._sweep_at = SETTLE_EVERY

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        try:
            await self.flush()
        finally:
            await self._producer.stop()

    async def __aenter__(self) -> EventProducer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def send_raw(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        """Queue any bytes on any topic (for tools and tests of bad input)."""
        self._pending.append(await self._producer.send(topic, value=value, key=key))
        if len(self._pending) >= self._sweep_at:
            self._settle_acknowledged()

    def _settle_acknowledged(self) -> None:
        """Forget the deliveries already acknowledged; raise the first that failed."""
        in_flight = [future for future in self._pending if not future.done()]
        for future in self._pending:
            if future.done():
                future.result()  # a delivery error surfaces here, as from flush()
        self._pending = in_flight
        self._sweep_at = len(in_flight) + SETTLE_EVERY

    async def send_event(self, event: Event) -> None:
        await self.send_raw(self.topics.events, event.to_bytes(), key=event.user_id.encode())

    async def send_item(self, item: Item) -> None:
        await self.send_raw(self.topics.items, item.to_bytes(), key=item.item_id.encode())

    async def send_events(self, events: Iterable[Event]) -> int:
        """Queue many events and wait until all are acknowledged; returns how many."""
        count = 0
        for event in events:
            await self.send_event(event)
            count += 1
        await self.flush()
        return count

    async def flush(self) -> None:
        """Wait until every queued message is acknowledged; raises the first failure."""
        pending, self._pending = self._pending, []
        if pending:
            await asyncio.gather(*pending)

"""The producer SDK's bookkeeping of deliveries, with aiokafka's producer replaced by a stub
(the sends themselves are tested against the real broker in tests/integration/test_bus.py)."""

from __future__ import annotations

import asyncio

import pytest

from streamrec.stream import producer as producer_module
from streamrec.stream.producer import SETTLE_EVERY, EventProducer
from streamrec.stream.settings import Settings


class StubKafkaProducer:
    """Queues nothing: every send's delivery future is resolved at once (or failed, or held)."""

    def __init__(self) -> None:
        self.held: list[asyncio.Future] = []
        self.fail_next = False

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        if self.fail_next:
            future.set_exception(RuntimeError("delivery failed"))
            self.fail_next = False
        elif topic == "held":
            self.held.append(future)
        else:
            future.set_result(None)
        return future


def _producer() -> tuple[EventProducer, StubKafkaProducer]:
    producer = EventProducer(Settings())
    stub = StubKafkaProducer()
    producer._producer = stub  # type: ignore[assignment]
    return producer, stub


async def test_a_producer_that_never_flushes_keeps_only_deliveries_in_flight() -> None:
    producer, stub = _producer()
    for n in range(5 * SETTLE_EVERY):
        await producer.send_raw("held" if n < 3 else "events", b"x")
        assert len(producer._pending) <= SETTLE_EVERY + 3
    assert len(stub.held) == 3 and all(future in producer._pending for future in stub.held)
    for future in stub.held:
        future.set_result(None)
    await producer.flush()
    assert producer._pending == []


async def test_a_failed_delivery_still_raises_without_a_flush(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(producer_module, "SETTLE_EVERY", 10)
    producer, stub = _producer()
    producer._sweep_at = 10
    stub.fail_next = True
    with pytest.raises(RuntimeError, match="delivery failed"):
        for _ in range(20):
            await producer.send_raw("events", b"x")

"""Micro-batches from a Faust stream that ack exactly the events they hand out.

Faust's `Stream.take_events` loses events under load (faust-streaming 0.11): an event that
arrives while a batch is out waits for that batch; when it wakes, it clears the *next* batch's
guard (`buffer_consuming = None` in a `finally`), joins the buffer while that next batch is
being processed, and is acked with it without ever being handed out. A worker restarted
after SIGKILL, catching up on a backlog with a 5 ms batch window, lost about one event in a
hundred that way (tests/e2e/test_failover.py). Acked events are committed, so they are not
read again: the loss is silent.

`BatchingStream.take_events` keeps Faust's contract (at most `max_` events, at most `within`
seconds) and its mechanics (a passive processor fills the buffer; acks only after the
caller's loop body for a batch has run), with two rules made strict: while a batch is out,
nothing joins the buffer, and only the events of a batch the caller finished are acked (a
loop body that raises leaves its batch unacked, to be read again, not committed unread).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import faust
from faust.types import EventT
from mode.utils.aiter import aiter
from mode.utils.futures import notify


def release_unacked(consumer: Any, events: Sequence[EventT]) -> None:
    """Stop Faust waiting for `events` before a stop or a rebalance, without acking them.

    Faust waits until every message in flight is acked (`Consumer.wait_empty`); a message
    that is neither acked nor tracked is not committed either, so it is read again from
    the committed offset by whoever owns its partition next (or by this worker: a hole at
    the head of a partition is read again, `streamrec.consumers.worker.transport.head_gap`).
    """
    messages = [event.message for event in events]
    read_again = getattr(consumer, "read_again", None)  # streamrec's transport (transport.py)
    if read_again is not None:
        read_again(messages)
    else:
        for message in messages:
            consumer._unacked_messages.discard(message)


class BatchingStream(faust.Stream):
    """A Faust stream whose `take_events` never acks an event it did not hand out."""

    async def take_events(self, max_: int, within: float) -> AsyncGenerator[Sequence[EventT], None]:  # type: ignore[override]
        """Lists of up to `max_` events, each as soon as it is full or `within` s have passed."""
        events: list[EventT] = []
        full = asyncio.Event()
        room = asyncio.Event()  # set while the buffer may grow past `max_` - 1 (not full)
        room.set()
        out: asyncio.Future[None] | None = None  # set while a batch is being processed
        acks_were_enabled = self.enable_acks

        async def add_to_buffer(value: Any) -> Any:
            nonlocal out
            # Wait out every batch that is being processed, the one that comes next included.
            while out is not None:
                await asyncio.shield(out)
            while not room.is_set():
                await self.wait(room)  # type: ignore[arg-type]
                while out is not None:
                    await asyncio.shield(out)
            event = self.current_event
            if event is None:
                raise RuntimeError("take_events: no current event for a buffered value")
            events.append(event)
            if len(events) >= max_:
                full.set()
                room.clear()
            return value

        self.enable_acks = False  # acked here, after the caller is done with the batch
        self.add_processor(add_to_buffer)
        self._enable_passive(aiter(self.channel))  # type: ignore[arg-type]
        try:
            while not self.should_stop:
                await self.wait_for_stopped(full, timeout=within)  # type: ignore[arg-type]
                if not events:
                    continue
                out = self.loop.create_future()
                batch = events[:max_]
                done = False
                try:
                    yield batch
                    done = True  # the caller asked for the next batch: it is done with this one
                finally:
                    del events[: len(batch)]
                    if done:
                        for event in batch:
                            await self.ack(event)
                    else:  # the caller failed or stopped: not acked, read again from the
                        release_unacked(self.app.consumer, batch)  # committed offset
                    finished, out = out, None
                    notify(finished)
                    if len(events) < max_:
                        full.clear()
                        room.set()
        finally:
            self.enable_acks = acks_were_enabled
            self._processors.remove(add_to_buffer)

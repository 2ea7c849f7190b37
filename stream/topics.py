"""Creating the contract's topics (idempotently) and waiting for a broker to answer."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError

from streamrec.stream.settings import Settings

log = logging.getLogger(__name__)

RETRY_S = 0.5


async def _admin(settings: Settings, timeout_s: float) -> AIOKafkaAdminClient:
    """A started admin client, retrying while the broker is still coming up."""
    deadline = time.monotonic() + timeout_s
    while True:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=settings.bootstrap_servers, **settings.kafka_client_options()
        )
        try:
            await admin.start()
            return admin
        except KafkaConnectionError as exc:
            await admin.close()
            if time.monotonic() > deadline:
                raise ConnectionError(
                    f"no Kafka broker answers at {settings.broker} after {timeout_s}s: {exc}"
                ) from exc
            await asyncio.sleep(RETRY_S)


async def wait_for_broker(settings: Settings, timeout_s: float = 30.0) -> None:
    """Return once the broker answers a metadata request; ConnectionError after the timeout."""
    admin = await _admin(settings, timeout_s)
    await admin.close()


async def ensure_topics(
    settings: Settings,
    names: Sequence[str] | None = None,
    partitions: int | None = None,
    timeout_s: float = 30.0,
) -> list[str]:
    """Create the topics (default: every contract topic) that do not exist yet; returns those."""
    wanted = list(names or settings.topics.all())
    admin = await _admin(settings, timeout_s)
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in wanted if name not in existing]
        created = []
        for name in missing:
            topic = NewTopic(
                name=name,
                num_partitions=partitions or settings.partitions,
                replication_factor=settings.replication,
            )
            try:
                await admin.create_topics([topic])
                created.append(name)
            except TopicAlreadyExistsError:  # another worker won the race
                pass
            except KafkaError as exc:
                raise RuntimeError(f"could not create topic {name!r}: {exc}") from exc
        if created:
            log.info("created topics %s", created)
        return created
    finally:
        await admin.close()

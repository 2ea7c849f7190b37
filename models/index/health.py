"""Whether the item index answers, and when to ask it again after it did not.

A Qdrant server can go away (restart, network, overload). While it does, the recommender
serves trending lists that need no index call (reason `INDEX_UNAVAILABLE_REASON`) rather
than stop; after a failure it leaves the index alone for `retry_s`, so a server that times
out costs one timeout per `retry_s`, not one per call. The first call after that is a probe;
when it is answered, serving is back to normal at once.

>>> now = [0.0]
>>> health = IndexHealth(retry_s=10.0, clock=lambda: now[0])
>>> health.should_try(), health.available
(True, True)
>>> health.failed(IndexUnavailableError("connection refused"))
>>> health.should_try(), health.available
(False, False)
>>> now[0] = 10.0
>>> health.should_try()  # time for a probe
True
>>> health.recovered()
>>> health.available, health.outages
(True, 1)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from streamrec.models.index.protocol import IndexUnavailableError

log = logging.getLogger(__name__)

#: The reason of every item of a list served while the item index is unavailable.
INDEX_UNAVAILABLE_REASON = "trending (item index unavailable)"
#: The `model_version` of such lists: no model ranked them (online hit-rates stay honest).
FALLBACK_VERSION = "trending"
#: The `reason` label of `streamrec_fallback_lists_total` for those lists.
FALLBACK_INDEX_UNAVAILABLE = "index_unavailable"

__all__ = [
    "FALLBACK_INDEX_UNAVAILABLE",
    "FALLBACK_VERSION",
    "INDEX_UNAVAILABLE_REASON",
    "IndexHealth",
    "IndexUnavailableError",
]


@dataclass
class IndexHealth:
    """The item index's state as its callers saw it: available, or failed and when to retry.

    Shared by everyone who calls the index in one process (the recommender, the catalogue
    writer), so that one failure spares all of them the wait for `retry_s`.
    """

    retry_s: float = 10.0  # after a failure, no call for this long (s)
    clock: Callable[[], float] = time.monotonic
    available: bool = True
    last_error: str = ""  # the newest failure, for logs and /readyz
    outages: int = 0  # times it became unavailable
    _failed_at: float = field(default=0.0, repr=False)
    _retry_at: float = field(default=0.0, repr=False)

    def should_try(self) -> bool:
        """Whether to call the index now (always while available; once per `retry_s` after)."""
        return self.available or self.clock() >= self._retry_at

    def failed(self, error: BaseException) -> None:
        """An index call failed because the index was not there; logged once per outage."""
        now = self.clock()
        self.last_error = str(error)
        self._retry_at = now + self.retry_s
        if self.available:
            self.available = False
            self.outages += 1
            self._failed_at = now
            log.warning(
                "item index unavailable, serving trending lists; retrying every %.0f s: %s",
                self.retry_s,
                error,
            )

    def recovered(self) -> None:
        """An index call succeeded: back to normal."""
        if not self.available:
            self.available = True
            log.info(
                "item index answers again after %.1f s; serving normally", self.clock() - self._failed_at
            )

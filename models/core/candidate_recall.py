"""Candidate recall, counted live: was the item a user took next among the candidates their
last list was chosen from, and which source put it there?

The top K can only be as good as the candidates: HR@K = recall of the candidates x the share
of those the ranking keeps in the top K. This says which of the two limits a stream (the
evaluator reports it per system; the worker exports it as a metric).

>>> import numpy as np
>>> from streamrec.models.core.blend import ServedCandidates
>>> from streamrec.models.core.candidate_batch import Source
>>> recall = CandidateRecall()
>>> served = ServedCandidates(["a", "b"], np.zeros((2, 1)), sources=np.array([Source.COVISIT.code, Source.PEERS.code]))
>>> recall.observe(served, "b"), recall.observe(served, "z")  # the row among the candidates, or None
(1, None)
>>> recall.as_dict()
{'judged': 2, 'held': 1, 'recall': 0.5, 'by_source': {'peers': 0.5}}
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from streamrec.models.core.blend import ServedCandidates
from streamrec.models.core.candidate_batch import Source

_SOURCE_OF_CODE = {source.code: source.value for source in Source}


class CandidateRecall:
    """Counts of next items judged against the candidates served, held, and held by source
    (the source that put the item among the candidates first)."""

    def __init__(self) -> None:
        self.judged = 0
        self.held = 0
        self.held_by_source: Counter[str] = Counter()

    def observe(self, served: ServedCandidates, consumed: str) -> int | None:
        """Count one next item; its row among the candidates, None if it was not one."""
        self.judged += 1
        try:
            row = served.ids.index(consumed)
        except ValueError:
            return None
        self.held += 1
        if served.sources is not None:
            self.held_by_source[_SOURCE_OF_CODE.get(int(served.sources[row]), "other")] += 1
        return row

    def as_dict(self) -> dict[str, Any]:
        """The counts and shares (of the next items judged), rounded for a report."""
        judged = max(self.judged, 1)
        return {
            "judged": self.judged,
            "held": self.held,
            "recall": round(self.held / judged, 4),
            "by_source": {source: round(n / judged, 4) for source, n in self.held_by_source.most_common()},
        }

"""`streamrec worker` with a fault planted for one user, for tests/e2e/test_poison.py.

Ranking raises whenever the user named by `STREAMREC_TEST_POISON_USER` is in the batch: a
bug that only one user's data reaches. The fault lives here, in the test tree; nothing in
streamrec reads that variable.

    STREAMREC_TEST_POISON_USER=u0003 python tests/e2e/poisoned_worker.py worker
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from streamrec.consumers.cli.main import main
from streamrec.models.core.recommender import Recommender


def plant_fault(poison_user: str) -> None:
    """From now on, ranking raises whenever `poison_user` is in the batch."""
    rank = Recommender.recommend

    def recommend(self: Recommender, states: Sequence[Any]) -> Any:
        if any(state.user_id == poison_user for state in states):
            raise RuntimeError(f"planted fault: cannot rank for {poison_user}")
        return rank(self, states)

    Recommender.recommend = recommend  # type: ignore[method-assign]


if __name__ == "__main__":
    plant_fault(os.environ["STREAMREC_TEST_POISON_USER"])
    sys.exit(main())

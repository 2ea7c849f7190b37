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

from streamrec.consumers.cli import main
from streamrec.models.recommender import Recommender

POISON_USER = os.environ["STREAMREC_TEST_POISON_USER"]
_recommend = Recommender.recommend


def recommend(self: Recommender, states: Sequence[Any]) -> Any:
    if any(state.user_id == POISON_USER for state in states):
        raise RuntimeError(f"planted fault: cannot rank for {POISON_USER}")
    return _recommend(self, states)


Recommender.recommend = recommend  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main())

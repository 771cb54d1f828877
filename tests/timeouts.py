"""The one time limit every wait in the tests derives from; NBCHAT_TEST_TIME_SCALE
scales it for a slow machine."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

TIMEOUT = 10.0 * float(os.environ.get("NBCHAT_TEST_TIME_SCALE", "1"))


def wait_until(predicate: Callable[[], object], what: str, timeout: float = TIMEOUT) -> None:
    """Poll ``predicate`` until it is true; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)

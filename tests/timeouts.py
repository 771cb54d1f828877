"""The one time limit every wait in the tests derives from; NBCHAT_TEST_TIME_SCALE
scales it for a slow machine."""

from __future__ import annotations

import os

TIMEOUT = 10.0 * float(os.environ.get("NBCHAT_TEST_TIME_SCALE", "1"))

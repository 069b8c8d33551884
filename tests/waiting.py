"""One polling helper for tests that wait on real processes (workers, brokers, servers)."""
from __future__ import annotations

import time
from typing import Any, Callable


def wait_for(predicate: Callable[[], Any], timeout: float, what: str = "condition", every: float = 0.2) -> Any:
    """Poll ``predicate`` until it returns something truthy and return that; AssertionError
    naming ``what`` after ``timeout`` s (the predicate is always tried at least once)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)

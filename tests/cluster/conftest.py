"""The cluster tests need network namespaces (root, iproute2): skipped with the reason otherwise."""
from __future__ import annotations

import pytest

from tests.cluster.netbed import unavailable_reason


@pytest.fixture(scope="session")
def netns() -> None:
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"multi-host test bed unavailable: {reason}")

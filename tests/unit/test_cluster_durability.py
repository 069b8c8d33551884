"""faec_rec.cluster.durability against the real shared Redis (AOF off there)."""
from __future__ import annotations

import pytest

from faec_rec.cluster.durability import Local, confirm, probe
from faec_rec.errors import BackendUnavailable, DurabilityError


def test_probe_reads_the_server(redis_client) -> None:
    server = probe(redis_client)
    assert server.version >= (6,)
    assert server.has_waitaof == (server.version >= (7, 2))


def test_levels_follow_the_server(redis_client, keys) -> None:
    server = probe(redis_client)
    if server.aof:
        pytest.skip("the shared test Redis has AOF on; these checks expect it off")
    assert confirm(redis_client, keys, "off").method == "off"
    got = confirm(redis_client, keys, "auto")
    assert got.local is Local.NONE and got.replicas == 0
    with pytest.raises(DurabilityError, match="fsync"):
        confirm(redis_client, keys, "fsync")
    with pytest.raises(DurabilityError, match="replica"):
        confirm(redis_client, keys, "replicas", min_replicas=1)
    # a durability failure is a backend failure: the enrol task retries it
    assert issubclass(DurabilityError, BackendUnavailable)

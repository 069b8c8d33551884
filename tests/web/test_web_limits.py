"""Login lockout and request rate limits, counted in Redis: two server apps (as two server
processes would) on one Redis see the same counts."""
from __future__ import annotations

import re
from typing import Any, Iterator

import pytest

from tests.web.conftest import bearer, make_settings

MESSAGE = "not valid"


@pytest.fixture
def two_servers(redis_url: str, prefix: str, tmp_path: Any, redis_client: Any) -> Iterator[tuple[Any, Any, Any]]:
    """Two apps on the same Redis and prefix (each its own Client, limiter and guard) and their HTTP clients."""
    from fastapi.testclient import TestClient

    from faec_rec.web.app import create_app

    settings = make_settings(redis_url, prefix, tmp_path, rate_limit_per_s=0.01, rate_burst=3,
                             login_failures_per_account=3, login_failures_per_address=12, login_lockout_s=30,
                             login_lockout_max_s=100)
    a, b = create_app(settings), create_app(settings)
    a.state.keystore.create("admin", "alice", password="alice-password-123", actor="test")
    a.state.keystore.create("viewer", "bob", password="bob-password-123", actor="test")
    with TestClient(a, base_url="https://testserver") as ha, TestClient(b, base_url="https://testserver") as hb:
        yield a, ha, hb


def _login(http: Any, **form: str) -> Any:
    token = re.search(r'name="csrf" value="([^"]+)"', http.get("/login").text).group(1)
    return http.post("/login", data={"csrf": token, **form}, follow_redirects=False)


def _unlock(redis_client: Any) -> None:
    """Let every lockout run out now (what waiting its Retry-After would do)."""
    for key in redis_client.scan_iter(match="*:web:login-failures:*"):
        if redis_client.hexists(key, "locked_until"):
            redis_client.hset(key, "locked_until", "0")


def test_an_account_locks_after_repeated_failures_on_any_server_and_the_lock_grows(
        two_servers: tuple[Any, Any, Any], redis_client: Any) -> None:
    _app, ha, hb = two_servers
    for http in (ha, hb, ha):  # failures counted across both servers
        r = _login(http, name="alice", secret="wrong-password")
        assert r.status_code == 401 and MESSAGE in r.text
    r = _login(hb, name="alice", secret="alice-password-123")  # the right password, but locked
    assert r.status_code == 429 and "too many failed logins" in r.text.lower() and "faec_session" not in r.headers.get("set-cookie", "")
    assert 25 <= int(r.headers["retry-after"]) <= 30
    assert _login(ha, name="bob", secret="bob-password-123").status_code == 303  # another account is not locked

    _unlock(redis_client)
    assert _login(ha, name="alice", secret="wrong-again").status_code == 401  # one more failure: the lock doubles
    r = _login(hb, name="alice", secret="alice-password-123")
    assert r.status_code == 429 and 55 <= int(r.headers["retry-after"]) <= 60
    _unlock(redis_client)
    _login(ha, name="alice", secret="wrong-3")
    _unlock(redis_client)
    _login(ha, name="alice", secret="wrong-4")
    r = _login(hb, name="alice", secret="alice-password-123")
    assert r.status_code == 429 and int(r.headers["retry-after"]) == 100  # capped at login_lockout_max_s

    _unlock(redis_client)
    assert _login(hb, name="alice", secret="alice-password-123").status_code == 303
    assert _login(ha, name="alice", secret="wrong-5").status_code == 401
    assert _login(hb, name="alice", secret="alice-password-123").status_code == 303  # success had cleared the count


def test_one_address_guessing_across_names_and_keys_is_locked_out(two_servers: tuple[Any, Any, Any]) -> None:
    _app, ha, hb = two_servers
    for i in range(12):  # spread over names (none reaches its own limit) and bare keys
        form = {"secret": f"faec_guess{i}"} if i % 2 else {"name": f"user{i}", "secret": "guess"}
        assert _login(ha if i % 2 else hb, **form).status_code == 401
    r = _login(ha, name="bob", secret="bob-password-123")
    assert r.status_code == 429 and "too many failed logins" in r.text.lower()


def test_request_rate_limit_per_key_is_shared_by_every_server(two_servers: tuple[Any, Any, Any]) -> None:
    app, ha, hb = two_servers
    _r, key = app.state.keystore.create("viewer", "v", actor="test")
    _r, other = app.state.keystore.create("viewer", "w", actor="test")
    codes = [h.get("/api/v1/me", headers=bearer(key)).status_code for h in (ha, hb, ha, hb)]
    assert codes == [200, 200, 200, 429]  # a burst of 3 in all, not 3 per server
    r = ha.get("/api/v1/me", headers=bearer(key))
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited" and int(r.headers["retry-after"]) >= 1
    assert hb.get("/api/v1/me", headers=bearer(other)).status_code == 200

"""Authentication, roles, CSRF, upload limits and escaping of the web server, on a real Redis.

No worker is needed: every request here is refused (or answered) before a task is queued,
or reads the gallery directly.
"""
from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.web.conftest import bearer, enrol_fake


def _login(http: Any, **form: str) -> Any:
    page = http.get("/login")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    return http.post("/login", data={"csrf": token, "next": "/people", **form}, follow_redirects=False)


def _csrf(http: Any, path: str = "/people") -> str:
    page = http.get(path, headers={"Accept": "text/html"})
    assert page.status_code == 200, page.text[:300]
    return re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)


def test_only_health_and_login_answer_without_credentials(http: Any) -> None:
    assert http.get("/healthz").json()["status"] == "ok"
    assert http.get("/login").status_code == 200
    for path in ("/api/v1/people", "/api/v1/events", "/api/v1/models", "/api/v1/cameras", "/api/v1/audit",
                 "/api/v1/me", "/api/v1/events/stream"):
        r = http.get(path)
        assert r.status_code == 401, path
        assert r.json()["error"]["code"] == "unauthorized"
    # a page sends a browser to the login page instead
    r = http.get("/people", headers={"Accept": "text/html"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login?next=/people")


def test_invalid_and_revoked_keys_get_401(http: Any, app: Any, role_keys: dict[str, str]) -> None:
    assert http.get("/api/v1/me", headers=bearer(role_keys["viewer"])).json()["role"] == "viewer"
    assert http.get("/api/v1/me", headers=bearer("faec_" + "x" * 43)).status_code == 401
    assert http.get("/api/v1/me", headers={"Authorization": "Basic abc"}).status_code == 401
    app.state.keystore.revoke("viewer-key", actor="test")
    r = http.get("/api/v1/me", headers=bearer(role_keys["viewer"]))
    assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]


def test_keys_are_stored_hashed(app: Any, role_keys: dict[str, str], redis_client: Any, prefix: str) -> None:
    dump = b"".join(v for k in redis_client.scan_iter(match=f"{prefix}:web:*") if redis_client.type(k) == b"hash"
                    for v in redis_client.hgetall(k).values()) + b"".join(
        k for k in redis_client.hkeys(app.state.client.keys.api_key_hashes()))
    for secret in role_keys.values():
        assert secret.encode() not in dump
    assert b"viewer-password-123" not in dump and b"scrypt$" in dump


def test_roles(http: Any, app: Any, role_keys: dict[str, str]) -> None:
    person = enrol_fake(app, "Grace")
    r = http.delete(f"/api/v1/people/{person.person_id}", headers=bearer(role_keys["viewer"]))
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    r = http.delete(f"/api/v1/people/{person.person_id}", headers=bearer(role_keys["operator"]))
    assert r.status_code == 403
    r = http.patch(f"/api/v1/people/{person.person_id}", json={"name": "Grace H"}, headers=bearer(role_keys["viewer"]))
    assert r.status_code == 403
    r = http.patch(f"/api/v1/people/{person.person_id}", json={"name": "Grace H"}, headers=bearer(role_keys["operator"]))
    assert r.status_code == 200 and r.json()["name"] == "Grace H"
    assert http.get("/api/v1/audit", headers=bearer(role_keys["operator"])).status_code == 403
    entries = http.get("/api/v1/audit", headers=bearer(role_keys["admin"])).json()["entries"]
    assert any(e["action"] == "rename" and "operator-key" in e["actor"] for e in entries)
    r = http.delete(f"/api/v1/people/{person.person_id}", headers=bearer(role_keys["admin"]))
    assert r.status_code == 200 and r.json()["templates_deleted"] == 2
    assert http.get(f"/api/v1/people/{person.person_id}", headers=bearer(role_keys["admin"])).status_code == 404
    # every change is in the audit stream, with who did it; forgetting Grace erases the
    # entries that name her (the rename), and the forget itself is kept without her
    entries = http.get("/api/v1/audit", headers=bearer(role_keys["admin"])).json()["entries"]
    assert any(e["action"] == "forget" and "admin-key" in e["actor"] for e in entries)
    assert not any(e["action"] == "rename" for e in entries)
    assert "Grace" not in json.dumps(entries) and person.person_id not in json.dumps(entries)


def test_session_cookie_flags_and_csrf(http: Any, app: Any, role_keys: dict[str, str]) -> None:
    person = enrol_fake(app, "Ada")
    r = _login(http, secret=role_keys["admin"])
    assert r.status_code == 303 and r.headers["location"] == "/people"
    cookie = [h for h in r.headers.get_list("set-cookie") if h.startswith("faec_session=")][0].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "secure" in cookie and "path=/" in cookie
    # reads work with the cookie alone; a change without the CSRF token is refused
    assert http.get("/api/v1/people").status_code == 200
    r = http.patch(f"/api/v1/people/{person.person_id}", json={"name": "Ada L"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "csrf"
    r = http.patch(f"/api/v1/people/{person.person_id}", json={"name": "Ada L"}, headers={"X-CSRF-Token": "wrong"})
    assert r.status_code == 403
    token = _csrf(http)
    r = http.patch(f"/api/v1/people/{person.person_id}", json={"name": "Ada L"}, headers={"X-CSRF-Token": token})
    assert r.status_code == 200 and r.json()["name"] == "Ada L"
    # logout ends the session
    assert http.post("/logout", headers={"X-CSRF-Token": token}, follow_redirects=False).status_code == 303
    assert http.get("/api/v1/people").status_code == 401


def test_login_form_needs_its_csrf_and_password_login_works(http: Any, role_keys: dict[str, str]) -> None:
    r = http.post("/login", data={"secret": role_keys["admin"]}, follow_redirects=False)
    assert r.status_code == 403
    assert _login(http, name="operator-key", secret="wrong-password").status_code == 401
    r = _login(http, name="operator-key", secret="operator-password-123")
    assert r.status_code == 303
    assert http.get("/api/v1/me").json()["role"] == "operator"


def test_login_never_redirects_off_site(http: Any, role_keys: dict[str, str]) -> None:
    page = http.get("/login")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
        r = http.post("/login", data={"csrf": token, "secret": role_keys["viewer"], "next": target},
                      follow_redirects=False)
        assert r.headers["location"] == "/live", target
        token = re.search(r'name="csrf" value="([^"]+)"', http.get("/login").text).group(1)


def test_uploads_too_large_or_not_images(http: Any, app: Any, role_keys: dict[str, str], faces_dir: Any) -> None:
    h = bearer(role_keys["operator"])
    r = http.post("/api/v1/identify", files={"image": ("notes.txt", b"hello, not an image", "text/plain")}, headers=h)
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media"
    r = http.post("/api/v1/people", data={"name": "X"}, files={"images": ("a.jpg", b"\xff\xd8 truncated", "image/jpeg")},
                  headers=h)
    assert r.status_code in (415, 422)
    # a header claiming 100000 x 100000 pixels: refused before decoding (the engine's pixel cap)
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    r = http.post("/api/v1/identify", files={"image": ("bomb.png", png, "image/png")}, headers=h)
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
    # a body over web.max_upload_bytes
    big = b"\xff\xd8" + b"\0" * (app.state.settings.web.max_upload_bytes + 10)
    r = http.post("/api/v1/identify", files={"image": ("big.jpg", big, "image/jpeg")}, headers=h)
    assert r.status_code == 413
    r = http.post("/api/v1/identify", headers=h)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"


def test_names_with_paths_or_scripts(http: Any, app: Any, role_keys: dict[str, str]) -> None:
    h = bearer(role_keys["admin"])
    person = enrol_fake(app, "Mallory")
    for bad in ("../../etc/passwd", "a\\b", "x\u0000y", "..", "   "):
        r = http.patch(f"/api/v1/people/{person.person_id}", json={"name": bad}, headers=h)
        assert r.status_code in (400, 422), bad
    # path traversal in ids never reaches a file: unknown person, or no such crop
    assert http.get("/api/v1/people/..%2F..%2Fetc%2Fpasswd", headers=h).status_code == 404
    assert http.get(f"/api/v1/people/{person.person_id}/faces/..%2F..%2Fredis", headers=h).status_code == 404
    # no "/" (names refuse path separators), so "</script>" cannot be spelt: tags and quotes can
    evil = "<script>alert('x')<img src=x onerror=alert(1)> \"q\""
    r = http.patch(f"/api/v1/people/{person.person_id}", json={"name": evil}, headers=h)
    assert r.status_code == 200
    r = _login(http, secret=role_keys["admin"])
    for path in ("/people", f"/people/{person.person_id}", "/sightings?person=%3Cscript%3Ealert(1)%3C/script%3E",
                 "/audit"):
        page = http.get(path, headers={"Accept": "text/html"})
        assert page.status_code == 200, path
        assert "<script>alert" not in page.text and "<img src=x" not in page.text, path
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;img src=x onerror=alert(1)&gt; &#34;q&#34;" in http.get("/people").text
    assert "script-src 'self'" in http.get("/people").headers["content-security-policy"]


def test_errors_are_json_with_a_code(http: Any, role_keys: dict[str, str]) -> None:
    h = bearer(role_keys["viewer"])
    r = http.get("/api/v1/people/nobody", headers=h)
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_person"
    r = http.get("/api/v1/jobs/not..valid", headers=h)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = http.get("/api/v1/events?before=zzz", headers=h)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid"
    r = http.get("/api/v1/events?limit=100000", headers=h)
    assert r.status_code == 422
    r = http.get("/api/v1/events", headers={**h, "Last-Event-ID": "x"})
    assert r.status_code == 200


def test_rate_limit_per_key(redis_url: str, prefix: str, tmp_path: Any, redis_client: Any) -> None:
    from fastapi.testclient import TestClient

    from faec_rec.web.app import create_app
    from tests.web.conftest import make_settings

    app = create_app(make_settings(redis_url, prefix, tmp_path, rate_limit_per_s=0.5, rate_burst=3))
    _r, viewer = app.state.keystore.create("viewer", "v", actor="test")
    _r, other = app.state.keystore.create("viewer", "w", actor="test")
    with TestClient(app, base_url="https://testserver") as http:
        codes = [http.get("/api/v1/me", headers=bearer(viewer)).status_code for _ in range(5)]
        assert codes[:3] == [200, 200, 200] and codes[3] == 429
        r = http.get("/api/v1/me", headers=bearer(viewer))
        assert r.json()["error"]["code"] == "rate_limited" and int(r.headers["retry-after"]) >= 1
        assert http.get("/api/v1/me", headers=bearer(other)).status_code == 200  # per key


def test_identify_without_a_worker_is_a_clear_504(http: Any, role_keys: dict[str, str], faces_dir: Any) -> None:
    photo = sorted((faces_dir / "lfw" / "Andre_Agassi").glob("*.jpg"))[0].read_bytes()
    r = http.post("/api/v1/identify", files={"image": ("a.jpg", photo, "image/jpeg")},
                  headers=bearer(role_keys["viewer"]))
    assert r.status_code == 504 and r.json()["error"]["code"] == "no_worker"
    assert "no worker answered" in r.json()["error"]["message"]


def test_models_listed_promoted_and_rolled_back_by_admins_only(http: Any, app: Any, role_keys: dict[str, str]) -> None:
    from faec_rec.training.head import build_head

    client = app.state.client
    registry = client.registry
    a = registry.register(build_head(), metrics={"candidate_gallery_tar_at_far": 0.97, "candidate_lfw_accuracy": 0.991},
                          note="gain 0.012 on held-out gallery; LFW within budget")
    b = registry.register(build_head(seed=1), status="rejected", note="LFW accuracy dropped <b>0.01</b>")
    listed = http.get("/api/v1/models", headers=bearer(role_keys["viewer"])).json()
    assert listed["current"] == "base" and [m["version"] for m in listed["models"]] == [a.version, b.version]
    assert http.post(f"/api/v1/models/{a.version}/promote", headers=bearer(role_keys["operator"])).status_code == 403
    r = http.post(f"/api/v1/models/{a.version}/promote", json={"reason": "test"}, headers=bearer(role_keys["admin"]))
    assert r.status_code == 200 and r.json()["version"] == a.version and r.json()["previous"] == "base"
    assert http.get("/api/v1/models", headers=bearer(role_keys["viewer"])).json()["current"] == a.version
    r = http.post("/api/v1/models/no-such-head/promote", headers=bearer(role_keys["admin"]))
    assert 400 <= r.status_code < 500 and "error" in r.json()
    _login(http, secret=role_keys["admin"])
    page = http.get("/models", headers={"Accept": "text/html"}).text
    assert a.version in page and "97.00 %" in page and "LFW accuracy dropped &lt;b&gt;0.01&lt;/b&gt;" in page
    r = http.post("/api/v1/models/rollback", headers={**bearer(role_keys["admin"])})
    assert r.status_code == 200 and r.json()["version"] == "base"
    actions = [e["action"] for e in client.audit_log()]
    assert "promote" in actions and "rollback" in actions


def test_login_page_reflects_no_text_from_the_url(http: Any) -> None:
    page = http.get("/login?error=Your+account+is+locked,+call+555&next=%22%3E%3Cscript%3E")
    assert page.status_code == 200
    assert "call 555" not in page.text and "<script>" not in page.text.split("</head>")[1]

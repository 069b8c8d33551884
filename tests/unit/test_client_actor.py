"""Client.as_actor copies share what the client builds lazily: the web server makes one copy
per request, and a copy that built its own Celery app leaked one app (and its producer pool)
per request: the server's memory grew ~3.7 MB a minute under identify traffic."""
from __future__ import annotations

from faec_rec.client import Client
from faec_rec.config import load_settings


def test_actor_copies_share_one_celery_app_and_one_gallery(redis_url, prefix, tmp_path) -> None:
    base = Client(settings=load_settings(redis_url=redis_url, prefix=prefix, data_dir=tmp_path), actor="web")
    try:
        first, second = base.as_actor("key:a"), base.as_actor("key:b")
        app = first.app  # built by a copy before the base ever used it, as in the server
        assert second.app is app and base.app is app
        assert first.gallery is second.gallery is base.gallery
        assert (first.actor, second.actor, base.actor) == ("key:a", "key:b", "web")
    finally:
        base.close()

"""redis+sentinel:// URLs: parsing, refusals, Celery's form, redaction."""
from __future__ import annotations

import pytest

from faec_rec.cluster.sentinel import celery_urls, parse
from faec_rec.config import load_settings
from faec_rec.embedded import redact_url
from faec_rec.errors import ConfigError

URL = "redis+sentinel://:s3cret@10.0.0.1:26379,10.0.0.2:26380,h3/mymaster/3?sentinel_password=pw"


def test_parse() -> None:
    u = parse(URL)
    assert u.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26380), ("h3", 26379))
    assert (u.service, u.db, u.password, u.sentinel_password) == ("mymaster", 3, "s3cret", "pw")
    assert parse("redis+sentinel://h:1/svc").db == 0


@pytest.mark.parametrize("bad, says", [("redis+sentinel://h:1", "service name"), ("redis+sentinel://h:x/m", "port"),
                                       ("redis+sentinel://h:1/m/y", "not a number"), ("redis+sentinel://h:1/a/1/2", "/SERVICE")])
def test_bad_urls_are_refused_by_the_settings(bad: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        load_settings(redis_url=bad)


def test_celery_gets_kombus_sentinel_form_everywhere() -> None:
    from faec_rec.workers.app import celery_config

    broker, options = celery_urls(URL)
    assert broker == "sentinel://:s3cret@10.0.0.1:26379;sentinel://:s3cret@10.0.0.2:26380;sentinel://:s3cret@h3:26379/3"
    conf = celery_config(load_settings(redis_url=URL))
    assert conf["broker_url"] == conf["result_backend"] == broker
    for key in ("broker_transport_options", "result_backend_transport_options"):
        assert conf[key]["master_name"] == "mymaster" and conf[key]["sentinel_kwargs"] == {"password": "pw"}
        assert conf[key]["global_keyprefix"].endswith(":celery:")


def test_passwords_are_redacted() -> None:
    shown = redact_url(URL)
    assert "s3cret" not in shown and "pw" not in shown.split("?")[1].replace("password", "")
    assert shown.startswith("redis+sentinel://:***@10.0.0.1:26379,")

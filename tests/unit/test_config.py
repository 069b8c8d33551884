"""The configuration: every key documented in deploy/faec-rec.example.toml with its default,
sources and their precedence, typos and bad values failing with the field's name, and the
rule that ids can never make paths outside the data folder."""
from __future__ import annotations

import importlib.util
import os
import re
import string
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from faec_rec.config import Settings, check_env_names, load_settings
from faec_rec.errors import ConfigError
from faec_rec.keys import Keys, safe_id

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "deploy" / "faec-rec.example.toml"


def _config_docs():
    spec = importlib.util.spec_from_file_location("config_docs", REPO / "deploy" / "config_docs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("config_docs", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No FAEC_ setting from the caller's shell leaks into these tests."""
    for name in list(os.environ):
        if name.upper().startswith("FAEC_") and not name.upper().startswith("FAEC_TEST_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str, name: str = "faec.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---- the example file documents every key ------------------------------------------


def _documented(text: str) -> dict[str, str]:
    """dotted key -> the line that documents it (set or commented out)."""
    found: dict[str, str] = {}
    section = ""
    for line in text.splitlines():
        header = re.match(r"^\[([a-z_]+)\]\s*$", line)
        if header:
            section = header.group(1)
            continue
        setting = re.match(r"^#?\s?([a-z_]+) = ", line)
        if setting:
            found[f"{section}.{setting.group(1)}" if section else setting.group(1)] = line
    return found


def test_every_setting_is_documented_in_the_example_file() -> None:
    docs = _config_docs()
    documented = _documented(EXAMPLE.read_text())
    expected = {key.dotted for key in docs.settings_keys()}
    missing = sorted(expected - set(documented))
    assert not missing, (f"{EXAMPLE.name} lacks {missing}: run "
                         "`python deploy/config_docs.py toml > deploy/faec-rec.example.toml`")
    assert not sorted(set(documented) - expected), "the example documents keys Settings does not have"


def test_example_file_holds_the_defaults_and_loads() -> None:
    data = tomllib.loads(EXAMPLE.read_text())
    defaults = Settings().model_dump(mode="json")
    for key in _config_docs().settings_keys():
        section = data.get(key.section, {}) if key.section else data
        if key.default is None:  # unset or machine-dependent: shown commented out, with an example
            assert key.name not in section, f"{key.dotted} has no fixed default; keep it commented out"
            continue
        want = defaults[key.section][key.name] if key.section else defaults[key.name]
        assert section[key.name] == want, f"{key.dotted}: example says {section[key.name]!r}, default is {want!r}"
    loaded = load_settings(EXAMPLE)
    assert loaded.model_dump(exclude={"data_dir"}) == Settings().model_dump(exclude={"data_dir"})


def test_commented_examples_are_valid_when_uncommented(tmp_path: Path) -> None:
    """Someone copying the file and removing a '# ' gets a value that validates."""
    text = re.sub(r"^# ([a-z_]+ = .*?)\s+# default: .*$", r"\1", EXAMPLE.read_text(), flags=re.M)
    settings = load_settings(write(tmp_path, text))
    assert settings.redis_url and settings.redis_url.startswith("rediss://")
    assert settings.gallery.threshold is not None


def test_deploy_readme_table_is_current() -> None:
    docs = _config_docs()
    text = (REPO / "deploy" / "README.md").read_text()
    assert docs.with_table(text) == text, "run `python deploy/config_docs.py readme deploy/README.md`"


def test_markdown_table_has_one_row_per_setting() -> None:
    docs = _config_docs()
    rows = [line for line in docs.markdown_text().splitlines() if line.startswith("| `")]
    assert len(rows) == len(list(docs.settings_keys()))
    assert any("`FAEC_GALLERY__THRESHOLD`" in row for row in rows)


# ---- sources and precedence ------------------------------------------------------------


def test_file_then_environment_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, '[gallery]\nthreshold = 0.4\nmargin = 0.1\n[workers]\nconcurrency = 3\n')
    from_file = load_settings(path)
    assert (from_file.gallery.threshold, from_file.gallery.margin, from_file.workers.concurrency) == (0.4, 0.1, 3)

    monkeypatch.setenv("FAEC_GALLERY__THRESHOLD", "0.5")
    monkeypatch.setenv("FAEC_PREFIX", "envprefix")
    merged = load_settings(path)
    # the environment wins key by key; the file's other keys in that section survive
    assert merged.gallery.threshold == 0.5
    assert merged.gallery.margin == 0.1 and merged.workers.concurrency == 3
    assert merged.prefix == "envprefix"


def test_faec_config_names_the_file_and_an_explicit_path_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = write(tmp_path, 'prefix = "fromenvfile"\n', "a.toml")
    explicit = write(tmp_path, '{"prefix": "fromjson"}', "b.json")
    monkeypatch.setenv("FAEC_CONFIG", str(env_file))
    assert load_settings().prefix == "fromenvfile"
    assert load_settings(explicit).prefix == "fromjson"


def test_keyword_overrides_beat_the_file_and_the_environment_beats_both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "[workers]\nconcurrency = 3\nhealth_port = 9100\n")
    assert load_settings(path, workers={"concurrency": 5}).workers.concurrency == 5
    monkeypatch.setenv("FAEC_WORKERS__CONCURRENCY", "7")
    assert load_settings(path, workers={"concurrency": 5}).workers.concurrency == 7


# ---- typos and bad values name the field ---------------------------------------------------


@pytest.mark.parametrize("text, field", [
    ("redis_ulr = 'redis://x'\n", "redis_ulr"),
    ("[gallery]\ntreshold = 0.5\n", "gallery.treshold"),
    ("[galery]\nthreshold = 0.5\n", "galery"),
])
def test_a_typo_in_the_file_fails_naming_it(tmp_path: Path, text: str, field: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(field)):
        load_settings(write(tmp_path, text))


@pytest.mark.parametrize("var, named", [
    ("FAEC_GALLERY__TRESHOLD", "gallery.treshold"),
    ("FAEC_REDIS_ULR", "FAEC_REDIS_URL"),
    ("FAEC_PERFIX", "FAEC_PREFIX"),
    ("FAEC_GALERY__THRESHOLD", "FAEC_GALLERY__THRESHOLD"),
])
def test_a_typo_in_the_environment_fails_naming_it(monkeypatch: pytest.MonkeyPatch, var: str, named: str) -> None:
    monkeypatch.setenv(var, "0.5")
    with pytest.raises(ConfigError, match=re.escape(named)):
        load_settings()


def test_other_faec_variables_are_not_mistaken_for_typos() -> None:
    check_env_names({"FAEC_CONFIG": "x", "FAEC_TEST_REDIS_URL": "x", "FAEC_DEMO_FACES": "x", "PATH": "/bin"})
    with pytest.raises(ConfigError, match="FAEC_LOG_LEVEL"):
        check_env_names({"FAEC_LOG_LEVLE": "INFO"})


@pytest.mark.parametrize("text, field", [
    ("[workers]\nconcurrency = 0\n", "workers.concurrency"),
    ("[workers]\nhealth_port = 70000\n", "workers.health_port"),
    ("[gallery]\nthreshold = 'high'\n", "gallery.threshold"),
    ("prefix = 'has space'\n", "prefix"),
    ("log_level = 'LOUD'\n", "log_level"),
    ("[faces]\nmax_image_pixels = -1\n", "faces.max_image_pixels"),
])
def test_a_bad_value_in_the_file_fails_naming_the_field(tmp_path: Path, text: str, field: str) -> None:
    with pytest.raises(ConfigError, match=rf"invalid configuration: {re.escape(field)}:"):
        load_settings(write(tmp_path, text))


def test_a_bad_value_in_the_environment_fails_naming_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAEC_WORKERS__CONCURRENCY", "many")
    with pytest.raises(ConfigError, match=r"workers\.concurrency"):
        load_settings()


def test_unreadable_or_malformed_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file .*missing.toml"):
        load_settings(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="(?i)broken.toml is not valid toml"):
        load_settings(write(tmp_path, "[gallery\n", "broken.toml"))
    with pytest.raises(ConfigError, match="must hold a table"):
        load_settings(write(tmp_path, "[1, 2]", "list.json"))


# ---- ids can never make paths outside the data folder ---------------------------------------


@pytest.mark.parametrize("bad", [
    "..", ".", "../etc", "a/../../b", "a/b", "/etc/passwd", "a\\b", "..\\x", "x\x00y", "", " ",
    "a b", "x" * 129, "~root", "$HOME", "name\n", "caf\u00e9", "a..b",
])
def test_safe_id_refuses_anything_path_like(bad: str) -> None:
    with pytest.raises(ValueError, match="may only hold"):
        safe_id(bad, "person id")
    with pytest.raises(ValueError):
        Keys("t").person(bad)
    with pytest.raises(ValueError):
        Keys("t").frame(bad, 1)


def test_safe_id_refuses_non_strings() -> None:
    for bad in (None, 7, b"abc", ["a"]):
        with pytest.raises(ValueError):
            safe_id(bad)  # type: ignore[arg-type]


def test_accepted_ids_always_stay_inside_the_data_folder(tmp_path: Path, rng: np.random.Generator) -> None:
    """Fuzz: any string safe_id accepts, used as a folder and a file name, stays under data_dir."""
    alphabet = list(string.printable) + [".", ".", "/", "\\", "\x00", "\u2024", "\uff0e", "\u2215"]
    data_dir = (tmp_path / "data").resolve()
    accepted = 0
    for _ in range(5000):
        n = int(rng.integers(1, 12))
        candidate = "".join(rng.choice(alphabet, size=n))
        try:
            value = safe_id(candidate)
        except ValueError:
            continue
        accepted += 1
        for path in (data_dir / "crops" / value / f"{value}.jpg", data_dir / value):
            resolved = path.resolve()
            assert resolved.is_relative_to(data_dir) and resolved != data_dir, candidate
            assert len(path.relative_to(data_dir).parts) == len(path.parts) - len(data_dir.parts)
    assert accepted > 100  # the fuzz really exercised accepted ids


def test_key_prefix_refuses_a_trailing_newline() -> None:
    with pytest.raises(ConfigError, match="prefix"):
        Keys("faec\n")
    with pytest.raises(ConfigError, match="invalid configuration: prefix"):
        load_settings(prefix="faec\n")


# ---- Redis URLs: TLS form checked at start-up, passwords never echoed -------------------------


@pytest.mark.parametrize("url, fragment", [
    ("http://:pw@redis:6379/0", "must start with redis://"),
    ("redis.example.org:6379", "must start with redis://"),
    ("rediss://:pw@redis:6380/0", "ssl_cert_reqs=required"),
])
def test_bad_redis_urls_fail_naming_the_field_without_the_password(url: str, fragment: str) -> None:
    import traceback

    with pytest.raises(ConfigError, match="invalid configuration: redis_url") as info:
        load_settings(redis_url=url)
    assert fragment in str(info.value)
    assert ":pw@" not in "".join(traceback.format_exception(info.value))  # chained pydantic error included


def test_documented_tls_url_is_accepted_by_redis_and_celery() -> None:
    """The README's rediss:// form works with redis-py and with Celery's broker and backend."""
    import redis

    from faec_rec.workers.app import make_app

    url = "rediss://:pw@redis.example.org:6380/0?ssl_cert_reqs=required&ssl_ca_certs=/etc/faec-rec/ca.pem"
    settings = load_settings(redis_url=url)
    client = redis.Redis.from_url(settings.redis_url)
    assert client.connection_pool.connection_kwargs["ssl_ca_certs"] == "/etc/faec-rec/ca.pem"
    app = make_app(settings)
    assert app.backend.connparams["ssl_ca_certs"] == "/etc/faec-rec/ca.pem"  # builds, does not connect
    with app.connection_for_write() as conn:
        assert conn.transport_cls == "rediss" and conn.ssl


def test_logs_never_carry_url_passwords(capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    from faec_rec.logs import redact, setup_logging

    assert redact("to redis://:s3cret@h:6379/0 and rediss://u:p%40ss@h/1") == "to redis://:***@h:6379/0 and rediss://u:***@h/1"
    assert redact("http://host/a@b and plain text") == "http://host/a@b and plain text"
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        for json_lines in (False, True):
            setup_logging("INFO", json_lines=json_lines)
            logging.getLogger("faec_rec.test").info("connecting to %s", "redis://:s3cret@h:6379/0",
                                                    extra={"url": "redis://:s3cret@h"})
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
    err = capsys.readouterr().err
    assert "s3cret" not in err and err.count(":***@") == 3


# ---- rediss:// must check the server certificate unless told loudly -----------------------

@pytest.mark.parametrize("query", [
    "ssl_cert_reqs=none", "ssl_cert_reqs=NONE", "ssl_cert_reqs=CERT_NONE", "ssl_cert_reqs=cert_none",
    "SSL_CERT_REQS=none", "ssl_cert_reqs=%6Eone", "ssl_cert_reqs=optional", "ssl_cert_reqs=CERT_OPTIONAL",
    "ssl_cert_reqs=", "ssl_cert_reqs=required&ssl_cert_reqs=none", "ssl_cert_reqs=required&ssl_check_hostname=false",
])
def test_rediss_without_certificate_checks_is_refused(query: str) -> None:
    import traceback

    url = f"rediss://:pw@redis.example.org:6380/0?{query}"
    with pytest.raises(ConfigError, match="redis_url") as info:
        load_settings(redis_url=url)
    assert "redis_tls_insecure_skip_verify" in str(info.value) or "more than once" in str(info.value)
    assert ":pw@" not in "".join(traceback.format_exception(info.value))
    # Only the loudly named setting lets it through.
    assert load_settings(redis_url=url, redis_tls_insecure_skip_verify=True).redis_url == url


def test_rediss_with_required_certificate_checks_passes() -> None:
    for reqs in ("required", "CERT_REQUIRED", "Required"):
        url = f"rediss://:pw@redis.example.org:6380/0?ssl_cert_reqs={reqs}&ssl_ca_certs=/etc/ca.pem"
        assert load_settings(redis_url=url).redis_url == url


# ---- secrets from files: FAEC_<NAME>_FILE ---------------------------------------------------

def test_secrets_are_read_from_files_named_by_file_variables(tmp_path: Path, monkeypatch) -> None:
    url_file, key_file = tmp_path / "redis_url", tmp_path / "signing_key"
    url_file.write_text("redis://:s3cret@redis.example.org:6379/0\n")
    key_file.write_text("k3y")
    monkeypatch.setenv("FAEC_REDIS_URL_FILE", str(url_file))
    monkeypatch.setenv("FAEC_TRAINING__SIGNING_KEY_FILE", str(key_file))
    settings = load_settings()
    assert settings.redis_url == "redis://:s3cret@redis.example.org:6379/0"
    assert settings.training.signing_key.get_secret_value() == "k3y"
    monkeypatch.setenv("FAEC_REDIS_URL", "redis://other:6379/0")
    with pytest.raises(ConfigError, match="both FAEC_REDIS_URL and FAEC_REDIS_URL_FILE"):
        load_settings()
    monkeypatch.delenv("FAEC_REDIS_URL")
    monkeypatch.setenv("FAEC_REDIS_URL_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="cannot read the secret file"):
        load_settings()

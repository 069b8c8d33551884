"""Person names (issue 17 item 23): one validator for CLI and client, NFC on lookup
as on enrolment, joiners allowed, ids and names never confused. Real Redis."""
from __future__ import annotations

import unicodedata
from pathlib import Path

import numpy as np
import pytest

from faec_rec.client import Client
from faec_rec.config import GalleryConfig, load_settings
from faec_rec.errors import AmbiguousPersonError, GalleryError, UnknownPersonError
from faec_rec.index import Gallery
from faec_rec.index.store import clean_name


@pytest.fixture
def gallery(redis_client, keys, tmp_path: Path) -> Gallery:
    return Gallery(redis_client, keys, GalleryConfig(threshold=0.6), tmp_path / "data")


def _enrol(gallery: Gallery, name: str, seed: int) -> str:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, 128)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return gallery.enrol(name, x, sources=["a.jpg", "b.jpg"], content_hashes=[f"{name}-{seed}-{i}" for i in range(2)]).person_id


def test_a_name_typed_in_nfd_finds_the_person_enrolled_in_nfc(gallery: Gallery) -> None:
    pid = _enrol(gallery, unicodedata.normalize("NFD", "Zoë Ångström"), 1)
    assert gallery.person("Zoë Ångström").id == pid
    assert gallery.person(unicodedata.normalize("NFD", "zoë ångström")).id == pid
    assert gallery.person(pid).name == "Zoë Ångström"  # stored in NFC


@pytest.mark.parametrize("name", ["👨\u200d👩\u200d👧", "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"])
def test_zero_width_joiners_are_allowed(name: str) -> None:
    assert clean_name(name) == unicodedata.normalize("NFC", name)


@pytest.mark.parametrize("name, why", [
    ("a/b", "path separator"), ("..", "only dots"), ("tab\there", "control"), ("x" * 101, "longer than"),
    ("bidi\u202eevil", "control"), ("id:abc", "kept for lookups"),
])
def test_the_client_refuses_what_the_cli_refuses(redis_url: str, prefix: str, name: str, why: str) -> None:
    client = Client(settings=load_settings(redis_url=redis_url, prefix=prefix))
    try:
        with pytest.raises(GalleryError, match=why):
            client.enrol(name, [b"\xff\xd8 not sent"], wait=False)
        assert client.redis.llen("enrol") == 0 and not list(client.redis.scan_iter(match=f"{prefix}:*"))
    finally:
        client.close()


def test_a_name_equal_to_another_persons_id_never_resolves_to_them(gallery: Gallery) -> None:
    victim = _enrol(gallery, "Victim", 2)
    impostor = _enrol(gallery, victim, 3)  # named with the victim's id
    with pytest.raises(AmbiguousPersonError, match="id:"):
        gallery.person(victim)
    assert gallery.person(f"id:{victim}").name == "Victim"
    assert gallery.person(f"name:{victim}").id == impostor
    with pytest.raises(UnknownPersonError):
        gallery.person("id:Victim")  # a name is not an id
    gallery.forget(f"name:{victim}")
    assert gallery.person(victim).name == "Victim"  # only the impostor went

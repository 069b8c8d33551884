"""Enrolment checks: photos that disagree with the person (item 21), duplicates reported as such (item 24)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from click.testing import CliRunner

from faec_rec.index.consistency import NOT_THIS_PERSON, PHOTOS_DISAGREE, check_photos


def _people(rng: np.random.Generator, people: int, per: int, spread: float = 0.15) -> np.ndarray:
    centres = rng.normal(size=(people, 128))
    x = np.repeat(centres, per, axis=0) + spread * rng.normal(size=(people * per, 128))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_a_photo_of_someone_else_is_refused_against_existing_templates() -> None:
    rng = np.random.default_rng(1)
    a = _people(rng, 1, 4)
    b = _people(rng, 1, 1)
    verdicts = check_photos(np.vstack([a[3:], b]), a[:3], pair_threshold=0.92)
    assert [r for r, _ in verdicts] == [None, NOT_THIS_PERSON]
    assert verdicts[0][1] > 0.9 > verdicts[1][1]


def test_one_call_keeps_its_majority_and_refuses_a_stray_photo() -> None:
    rng = np.random.default_rng(2)
    a = _people(rng, 1, 4)
    stray = _people(rng, 1, 1)
    verdicts = check_photos(np.vstack([a[:2], stray, a[2:]]), np.zeros((0, 128)), pair_threshold=0.92)
    assert [r for r, _ in verdicts] == [None, None, PHOTOS_DISAGREE, None, None]


def test_a_call_without_a_majority_is_refused_whole() -> None:
    rng = np.random.default_rng(3)
    many = _people(rng, 13, 4)  # 'enrol "Many"' with photos of 13 people
    assert {r for r, _ in check_photos(many, np.zeros((0, 128)), pair_threshold=0.92)} == {PHOTOS_DISAGREE}
    two = _people(rng, 2, 1)
    # two clearly different people: both refused; two just under the threshold (the grey
    # band, where same-person pairs land): which is wrong cannot be told, both kept (the
    # worker adds a warning)
    assert [r for r, _ in check_photos(two, np.zeros((0, 128)), pair_threshold=0.92)] == [PHOTOS_DISAGREE] * 2
    close = _people(rng, 1, 2)
    similarity = float(close[0] @ close[1])
    assert [r for r, _ in check_photos(close, np.zeros((0, 128)), pair_threshold=similarity + 0.02)] == [None, None]
    assert [r for r, _ in check_photos(close, np.zeros((0, 128)), pair_threshold=similarity + 0.08)] == [PHOTOS_DISAGREE] * 2
    assert [r for r, _ in check_photos(two[:1], np.zeros((0, 128)), pair_threshold=0.92)] == [None]


class _Client:
    def __init__(self, images: list[dict]) -> None:
        from faec_rec.config import Settings

        self.images = images
        self.settings = Settings()

    def enrol(self, name, paths, wait=True, timeout=None, **kw):  # noqa: ANN001, ANN003, ANN201
        return {"person_id": "p1", "images": self.images, "error": None}


def test_exact_duplicates_are_reported_as_duplicates_not_accepted(tmp_path: Path) -> None:
    import click

    from faec_rec.cli import _print_outcome, enrol_person

    photos = []
    for n in range(3):
        photos.append(tmp_path / f"{n}.jpg")
        photos[-1].write_bytes(b"x")
    client = _Client([
        {"name": str(photos[0]), "accepted": True, "reason": "ok"},
        {"name": str(photos[1]), "accepted": True, "reason": "duplicate", "detail": "already enrolled"},
        {"name": str(photos[2]), "accepted": False, "reason": "blurry", "detail": "sharpness 5 < 15"},
    ])
    outcome = enrol_person(client, "Ada", photos, 5.0)
    assert outcome.accepted == [str(photos[0])] and outcome.duplicates == [str(photos[1])]

    @click.command()
    def show() -> None:
        _print_outcome(outcome, tmp_path)

    out = CliRunner().invoke(show).output
    assert "  duplicate 1.jpg: already enrolled" in out
    assert "Ada (p1): 1 accepted, 1 duplicate, 1 refused" in out


def test_the_parts_of_a_windowed_enrolment_merge_into_one_report() -> None:
    """Client.enrol past its upload window sends parts; their reports read as one (item 2)."""
    from faec_rec.workers.enrolment import EnrolReport, ImageReport

    first = EnrolReport("r.1", "refused", None, "Ada", [ImageReport("a.jpg", False, "no_face")],
                        error="no_acceptable_image", detail="none passed", finished_at=10.0)
    second = EnrolReport("r.2", "done", "p7", "Ada", [ImageReport("b.jpg", True, "ok", template_id="t1"),
                                                      ImageReport("c.jpg", False, "blurry")],
                         model_version="base", finished_at=20.0, durability={"mode": "ack"})
    merged = EnrolReport.merged("r", [first, second])
    assert (merged.request_id, merged.status, merged.person_id, merged.error) == ("r", "done", "p7", None)
    assert [i.name for i in merged.images] == ["a.jpg", "b.jpg", "c.jpg"]
    assert [i.name for i in merged.accepted] == ["b.jpg"] and merged.finished_at == 20.0
    assert merged.durability == {"mode": "ack"}
    refused = EnrolReport.merged("r", [first, EnrolReport("r.2", "refused", None, "Ada", [], error="gallery_refused")])
    assert (refused.status, refused.error, refused.detail) == ("refused", "no_acceptable_image", "none passed")

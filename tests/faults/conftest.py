"""Fixtures of the fault suite: photos and frames from the shared face data, and one
worker (two pool processes) shared by the faults that do not kill it."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.faults.scenarios import Deployment

# One face per photo, detected and accepted by the quality gate in tests/integration.
PERSON = "Arnold_Schwarzenegger"
OTHER = "Andre_Agassi"
VIDEO = "face_recognition__short_hamilton_clip.mp4"


def lfw_photos(faces_dir: Path, folder: str, n: int) -> list[Path]:
    photos = sorted((faces_dir / "lfw" / folder).glob("*.jpg"))[:n]
    if len(photos) < n:
        pytest.skip(f"need {n} photos of {folder} in {faces_dir / 'lfw'}")
    return photos


@pytest.fixture(scope="session")
def photos(faces_dir: Path) -> list[Path]:
    """Six photos of one person."""
    return lfw_photos(faces_dir, PERSON, 6)


@pytest.fixture(scope="session")
def frame(faces_dir: Path) -> bytes:
    """A 250x250 JPEG with one face (of PERSON, not among ``photos``)."""
    return sorted((faces_dir / "lfw" / PERSON).glob("*.jpg"))[10].read_bytes()


@pytest.fixture(scope="session")
def video(faces_dir: Path) -> Path:
    return faces_dir / "videos" / VIDEO


@pytest.fixture(scope="session")
def shared(redis_url: str, tmp_path_factory: pytest.TempPathFactory, faces_dir: Path) -> Iterator[Deployment]:
    """A deployment under its own prefix with one worker of two pool processes."""
    dep = Deployment(redis_url, tmp_path_factory.mktemp("faults-shared"))
    try:
        worker = dep.start_worker(concurrency=2)
        worker.wait_ready()
        yield dep
    finally:
        dep.close()


@pytest.fixture(scope="session")
def other_photos(faces_dir: Path) -> list[Path]:
    """Three photos of a second person (kept apart from ``photos``' person)."""
    return lfw_photos(faces_dir, OTHER, 3)


@pytest.fixture(scope="session")
def other_frame(faces_dir: Path) -> bytes:
    """A JPEG with one face of OTHER, not among ``other_photos``."""
    return sorted((faces_dir / "lfw" / OTHER).glob("*.jpg"))[-1].read_bytes()

"""Back up a gallery enrolled by a real worker from real photos, restore it into an
empty deployment served by another real worker: identify answers the same.

Export and import run through the command line (``faec-rec gallery export|import``)
against the running Redis, as an operator would.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.faults.scenarios import Deployment

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PEOPLE = {"George W Bush": "George_W_Bush", "Colin Powell": "Colin_Powell", "Serena Williams": "Serena_Williams"}
STRANGER = "Tony_Blair"


def _cli(dep: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("faec-rec")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAEC_")}
    env.update(FAEC_REDIS_URL=dep.redis_url, FAEC_PREFIX=dep.prefix, FAEC_DATA_DIR=str(dep.data_dir),
               TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([str(script), *args], env=env, capture_output=True, text=True, timeout=300)


def _answers(dep: Deployment, probes: list[Path]) -> list[list[tuple[str | None, str, float | None]]]:
    return [[(f.person, f.decision, f.score) for f in dep.client.identify(p, timeout=180)] for p in probes]


@pytest.mark.timeout(600)
def test_restore_gives_the_same_answers(redis_url: str, tmp_path: Path, faces_dir: Path) -> None:
    lfw = faces_dir / "lfw"
    photos = {name: sorted((lfw / folder).glob("*.jpg")) for name, folder in PEOPLE.items()}
    probes = [p[-1] for p in photos.values()] + [sorted((lfw / STRANGER).glob("*.jpg"))[0]]
    source = Deployment(redis_url, tmp_path / "source")
    target = Deployment(redis_url, tmp_path / "target")
    archive = tmp_path / "gallery.tar.gz"
    try:
        source.start_worker().wait_ready()
        for name, files in photos.items():
            assert source.client.enrol(name, files[:3], timeout=180).status == "done"
        before = _answers(source, probes)
        for expected, faces in zip([*PEOPLE, None], before):
            assert expected in {person for person, _, _ in faces}, before
        done = _cli(source, "gallery", "export", str(archive))
        assert done.returncode == 0, done.stderr
        for worker in source.workers:
            worker.stop(timeout=10)

        # an empty deployment (own prefix, own data folder) with its own worker
        target.start_worker().wait_ready()
        done = _cli(target, "gallery", "import", str(archive))
        assert done.returncode == 0, done.stderr
        after = _answers(target, probes)
        assert [[(p, d) for p, d, _ in faces] for faces in after] == [[(p, d) for p, d, _ in faces] for faces in before]
        for a, b in zip(after, before):
            for (_, _, sa), (_, _, sb) in zip(a, b):
                assert sa == pytest.approx(sb, abs=1e-5)
        crops = sorted(p.relative_to(target.data_dir / "crops").parts[1] for p in (target.data_dir / "crops").rglob("*.jpg"))
        assert len(crops) == sum(len(target.client.person(n).template_ids) for n in PEOPLE)

        # a second import without --merge is refused with a clear message; with it, nothing doubles
        again = _cli(target, "gallery", "import", str(archive))
        assert again.returncode == 2 and "--merge" in again.stderr, again.stderr
        merged = _cli(target, "gallery", "import", "--merge", str(archive))
        assert merged.returncode == 0 and '"templates_added": 0' in merged.stdout, merged.stdout
        # a damaged archive is refused, naming the problem
        bad = tmp_path / "bad.tar.gz"
        raw = bytearray(archive.read_bytes())
        raw[len(raw) // 3] ^= 0x55
        bad.write_bytes(bytes(raw))
        refused = _cli(target, "gallery", "import", "--merge", str(bad))
        assert refused.returncode == 2 and "nothing was imported" in refused.stderr, refused.stderr
    finally:
        source.close()
        target.close()

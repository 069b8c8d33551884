"""The faec-rec command line driven as a new user would: subprocesses, a fresh
home, real photos. First on the embedded default (no Redis configured: a private
Redis under the data folder and a worker inside the command), then against the
running Redis with a real worker process started by ``faec-rec worker``."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from html import unescape as html_unescape
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ENROL = {"George W Bush": "George_W_Bush", "Colin Powell": "Colin_Powell", "Serena Williams": "Serena_Williams"}
STRANGERS = ("Tony_Blair", "Aaron_Eckhart")
TIMEOUT = 420


def _cli() -> list[str]:
    script = Path(sys.executable).with_name("faec-rec")
    return [str(script)] if script.exists() else [sys.executable, "-m", "faec_rec.cli"]


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAEC_")}
    env.update(HOME=str(home), XDG_DATA_HOME=str(home / ".local" / "share"), TF_CPP_MIN_LOG_LEVEL="2")
    env.update(extra)
    return env


def run(env: dict[str, str], *args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*_cli(), *args], env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=env["HOME"])


@pytest.fixture(scope="module")
def photos(faces_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """ROOT/<name>/ with three photos per person (links into the shared data), and a
    mixed folder: a held-out photo of each, two strangers, a dog, a corrupt JPEG
    and a text file."""
    base = tmp_path_factory.mktemp("cli_photos")
    enrol_root, mixed = base / "enrol", base / "mixed"
    mixed.mkdir()
    lfw = faces_dir / "lfw"
    for name, folder in ENROL.items():
        files = sorted((lfw / folder).glob("*.jpg"))
        (enrol_root / name).mkdir(parents=True)
        for f in files[:3]:
            (enrol_root / name / f.name).symlink_to(f)
        (mixed / f"heldout_{folder}.jpg").symlink_to(files[3])
    for folder in STRANGERS:
        (mixed / f"stranger_{folder}.jpg").symlink_to(sorted((lfw / folder).glob("*.jpg"))[0])
    (mixed / "dog.jpg").symlink_to(faces_dir / "no_face" / "darknet__dog.jpg")
    (mixed / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (mixed / "notes.txt").write_text("not an image")
    return {"enrol": enrol_root, "mixed": mixed, "base": base}


def check_identify_report(report: dict, html: str, mixed: Path) -> None:
    images = {Path(i["path"]).name: i for i in report["images"]}
    # every image is listed (the text file is skipped, not lost)
    assert set(images) == {p.name for p in mixed.iterdir() if p.suffix == ".jpg"}
    assert [Path(s["path"]).name for s in report["skipped"]] == ["notes.txt"]
    for name, folder in ENROL.items():
        faces = images[f"heldout_{folder}.jpg"]["faces"]
        assert any(f["person"] == name and f["decision"] == "known" for f in faces), (name, faces)
        for face in faces:
            assert len(face["box"]) == 4 and face["box"][0] < face["box"][2] and face["box"][1] < face["box"][3]
            assert isinstance(face["score"], float)
    for folder in STRANGERS:
        faces = images[f"stranger_{folder}.jpg"]["faces"]
        assert faces, f"no face found in {folder}'s photo"
        assert all(f["decision"] == "unknown" and f["person"] is None for f in faces), faces
    assert images["dog.jpg"]["faces"] == [] and images["dog.jpg"]["error"] is None
    assert images["corrupt.jpg"]["error"]
    assert report["summary"]["errors"] == 1
    # the page names the right people on the right cards and marks strangers
    cards = {}
    for chunk in html.split('<div class="card ')[1:]:
        m = re.match(r'[^"]*" data-status="([^"]+)" data-path="([^"]+)"', chunk)
        assert m, chunk[:200]
        cards[Path(html_unescape(m.group(2))).name] = (m.group(1), chunk)
    assert set(cards) == set(images)
    for name, folder in ENROL.items():
        assert f'<span class="k">{name}</span>' in cards[f"heldout_{folder}.jpg"][1]
    for folder in STRANGERS:
        status, card = cards[f"stranger_{folder}.jpg"]
        assert status == "stranger" and '<span class="u">unknown</span>' in card and 'class="k"' not in card
    assert cards["dog.jpg"][0] == "no-face" and cards["corrupt.jpg"][0] == "error"
    # a thumbnail per image but the corrupt one, plus the strangers' crops under "Strangers by visitor"
    visitor_crops = html.count('<img class="vc"')
    assert html.count("data:image/jpeg;base64,") - visitor_crops == len(images) - 1
    strangers = [f for i in report["images"] for f in i["faces"] if f["decision"] == "unknown" and f.get("visitor")]
    assert 1 <= visitor_crops <= len(strangers)


# ---- embedded default ---------------------------------------------------------------

@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli_home")


def test_embedded_enrol_identify_and_people(photos: dict[str, Path], home: Path) -> None:
    env = _env(home)
    enrol = run(env, "enrol", "--folder", str(photos["enrol"]))
    assert enrol.returncode in (0, 1), enrol.stderr
    assert "embedded mode" in enrol.stderr
    for name in ENROL:
        assert f"{name} (" in enrol.stdout and "accepted" in enrol.stdout
    data_dir = home / ".local" / "share" / "faec-rec"
    assert (data_dir / "redis").is_dir(), "the private Redis keeps its data under the user's data folder"

    # a new process: the gallery persisted
    out_json, out_html = photos["base"] / "emb.json", photos["base"] / "emb.html"
    identify = run(env, "identify", str(photos["mixed"]), "--report", str(out_json), "--html", str(out_html))
    assert identify.returncode == 1, identify.stderr  # partial: the corrupt JPEG
    assert "skipped (not an image)" in identify.stderr
    check_identify_report(json.loads(out_json.read_text()), out_html.read_text(), photos["mixed"])

    listed = run(env, "people", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    people = {p["name"]: p for p in json.loads(listed.stdout)}
    assert set(people) == set(ENROL)

    renamed = run(env, "people", "rename", "Colin Powell", "General Powell")
    assert renamed.returncode == 0, renamed.stderr
    forgot = run(env, "people", "forget", "General Powell", "--yes")
    assert forgot.returncode == 0, forgot.stderr
    listed = run(env, "people", "list", "--json")
    assert {p["name"] for p in json.loads(listed.stdout)} == {"George W Bush", "Serena Williams"}
    # no redis-server is left running after the commands
    assert not (data_dir / "redis" / "port").exists()


def test_embedded_bad_input(photos: dict[str, Path], home: Path, tmp_path: Path) -> None:
    env = _env(home)
    ghost = run(env, "people", "forget", "Nobody At All", "--yes")
    assert ghost.returncode == 2 and "Traceback" not in ghost.stderr
    assert len([line for line in ghost.stderr.splitlines() if line.startswith("error:")]) == 1

    slash = run(env, "enrol", "../../etc/evil", str(next(photos["enrol"].rglob("*.jpg"))))
    assert slash.returncode == 2 and "path separator" in slash.stderr

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("nothing")
    none = run(env, "identify", str(empty), "--report", str(tmp_path / "r.json"))
    assert none.returncode == 2 and "no images" in none.stderr
    assert not (tmp_path / "r.json").exists()

    # one good photo, one without a face, one corrupt: the rest of the batch is done
    batch = run(env, "enrol", "Serena Williams", str(photos["mixed"] / "heldout_Serena_Williams.jpg"),
                str(photos["mixed"] / "dog.jpg"), str(photos["mixed"] / "corrupt.jpg"))
    assert batch.returncode == 1, batch.stderr
    lines = batch.stdout.splitlines()
    assert any(line.strip().startswith("accepted") and "heldout_Serena" in line for line in lines), batch.stdout
    assert any(line.strip().startswith("refused") and "dog.jpg" in line for line in lines), batch.stdout
    assert any(line.strip().startswith("refused") and "corrupt.jpg" in line for line in lines), batch.stdout


def test_unreachable_redis_is_exit_3(home: Path, tmp_path: Path, photos: dict[str, Path]) -> None:
    env = _env(home, FAEC_REDIS_URL="redis://127.0.0.1:1/0")
    out = run(env, "identify", str(photos["mixed"]), "--report", str(tmp_path / "r.json"), timeout=60)
    assert out.returncode == 3
    assert "cannot reach Redis" in out.stderr and "FAEC_REDIS_URL" in out.stderr


# ---- against the running Redis with a real worker process ------------------------------

@pytest.fixture
def deployment(redis_url: str, home: Path):
    prefix = "tcli" + uuid.uuid4().hex[:8]
    env = _env(home, FAEC_REDIS_URL=redis_url, FAEC_PREFIX=prefix, FAEC_DATA_DIR=str(home / f"data-{prefix}"))
    yield env
    import redis

    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        client.delete(key)
    client.close()


def test_no_worker_consuming_is_exit_3(deployment: dict[str, str], photos: dict[str, Path], tmp_path: Path) -> None:
    out = run(deployment, "identify", str(photos["mixed"]), "--report", str(tmp_path / "r.json"), timeout=120)
    assert out.returncode == 3, out.stderr
    assert "no worker is consuming" in out.stderr and "faec-rec worker" in out.stderr


def wait_for_worker(env: dict[str, str], worker: subprocess.Popen, log_path: Path, timeout: float = 180) -> None:
    """Until the worker started by ``faec-rec worker`` consumes both queues (it loads the model first)."""
    from faec_rec.config import load_settings
    from faec_rec.embedded import consumers
    from faec_rec.workers.app import make_app

    app = make_app(load_settings(redis_url=env["FAEC_REDIS_URL"], prefix=env["FAEC_PREFIX"]))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert worker.poll() is None, log_path.read_text()[-3000:]
        if consumers(app, "enrol", 1.0) and consumers(app, "frames", 1.0):
            return
        time.sleep(1)
    pytest.fail("the worker did not start consuming in time:\n" + log_path.read_text()[-3000:])


def test_deployment_enrol_identify(deployment: dict[str, str], photos: dict[str, Path]) -> None:
    log_path = photos["base"] / "worker.log"
    with open(log_path, "w") as log:
        worker = subprocess.Popen([*_cli(), "worker", "-Q", "frames,enrol", "-c", "1", "-P", "solo", "-l", "WARNING"],
                                  env=deployment, stdout=log, stderr=subprocess.STDOUT, cwd=deployment["HOME"])
    try:
        wait_for_worker(deployment, worker, log_path)
        enrol = run(deployment, "enrol", "--folder", str(photos["enrol"]))
        assert enrol.returncode in (0, 1), enrol.stderr + log_path.read_text()[-3000:]
        assert "embedded mode" not in enrol.stderr
        for name in ENROL:
            assert f"{name} (" in enrol.stdout

        out_json, out_html = photos["base"] / "dep.json", photos["base"] / "dep.html"
        identify = run(deployment, "identify", str(photos["mixed"]), "--report", str(out_json), "--html", str(out_html))
        assert identify.returncode == 1, identify.stderr
        check_identify_report(json.loads(out_json.read_text()), out_html.read_text(), photos["mixed"])

        events = run(deployment, "events", "--json", "-n", "5")
        assert events.returncode == 0, events.stderr
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def test_embedded_camera_prints_events(faces_dir: Path, home: Path) -> None:
    video = faces_dir / "videos" / "face_recognition__short_hamilton_clip.mp4"
    env = _env(home)
    out = run(env, "camera", f"clip={video}", "--fps", "4", "--max-frames", "12")
    assert out.returncode == 0, out.stderr
    assert "clip: 12 frames pushed, 0 dropped" in out.stdout
    assert " clip track " in out.stdout and " arrived " in out.stdout, out.stdout
    # the events stay in the stream for `faec-rec events`
    events = run(env, "events", "--camera", "clip", "--json", "-n", "100")
    assert events.returncode == 0, events.stderr
    kinds = [json.loads(line)["type"] for line in events.stdout.splitlines()]
    assert "arrived" in kinds
    # the run ended: every track that arrived also left (none stays open forever)
    by_track: dict[str, list[str]] = {}
    for line in events.stdout.splitlines():
        event = json.loads(line)
        by_track.setdefault(str(event.get("track_id")), []).append(event["type"])
    for track, types in by_track.items():
        if "arrived" in types:
            assert "left" in types, (track, types)


def test_dead_camera_does_not_hang(home: Path) -> None:
    env = _env(home)
    out = run(env, "camera", "gone=/nonexistent/video.mp4", "--duration", "3", timeout=240)
    assert out.returncode == 1, out.stderr
    assert "gone: 0 frames pushed" in out.stdout


# ---- the private Redis itself (no model needed) ------------------------------------------

def test_private_redis_is_shared_persistent_and_starts_clean(tmp_path: Path) -> None:
    from faec_rec.config import load_settings
    from faec_rec.embedded import PrivateRedisLease, open_backend
    from faec_rec.workers.app import QUEUE_FRAMES, TASK_IDENTIFY

    settings = load_settings(data_dir=tmp_path, redis_url=None)
    with open_backend(settings) as first:
        assert first.embedded
        first.redis.set(first.keys.upload("kept"), b"x")
        # a second command at the same time joins the same server instead of starting another
        joined = PrivateRedisLease(tmp_path / "redis").acquire()
        try:
            assert not joined.owner and joined.url == first.settings.redis_url
        finally:
            joined.release()
        # tasks queued by a run that is then interrupted
        for i in range(3):
            first.app.send_task(TASK_IDENTIFY, args=[{"job": "j", "path": f"/x{i}.jpg", "key": None, "name": "x"}],
                                queue=QUEUE_FRAMES)
    assert not (tmp_path / "redis" / "port").exists()
    with open_backend(settings) as again:
        assert again.redis.get(again.keys.upload("kept")) == b"x"  # data persisted (append-only file)
        with again.app.connection_for_write() as conn:
            assert conn.default_channel.client.llen(QUEUE_FRAMES) == 0  # leftovers dropped


def test_cameras_registry_commands(deployment: dict[str, str]) -> None:
    """`faec-rec cameras add|list|remove`: a password read from stdin is kept off the command
    line and never printed; a registry runner needs a worker like any camera run."""
    secret = "rtsp://admin:hunter2-Secret@10.0.0.5:554/stream"
    added = subprocess.run([*_cli(), "cameras", "add", "door", "-", "--fps", "2"], env=deployment, input=secret + "\n",
                           capture_output=True, text=True, timeout=TIMEOUT, cwd=deployment["HOME"])
    assert added.returncode == 0, added.stderr
    assert "rtsp://***@10.0.0.5:554/stream" in added.stdout and "hunter2" not in added.stdout + added.stderr
    assert run(deployment, "cameras", "add", "door", "0").returncode == 2  # the id is taken
    assert run(deployment, "cameras", "add", "../x", "0").returncode == 2
    listed = run(deployment, "cameras", "list", "--json")
    (row,) = json.loads(listed.stdout)
    assert row["camera"] == "door" and row["registered"] and row["status"] == "waiting" and row["fps"] == 2.0
    assert "hunter2" not in listed.stdout
    runner = run(deployment, "camera", "--registry", "--duration", "2", timeout=120)
    assert runner.returncode == 3 and "no worker is consuming" in runner.stderr
    assert run(deployment, "camera", "--registry", "door=0").returncode == 2  # sources come from the registry
    assert run(deployment, "cameras", "remove", "door").returncode == 0
    gone = run(deployment, "cameras", "remove", "door")
    assert gone.returncode == 2 and "no camera 'door'" in gone.stderr
    assert "no camera" in run(deployment, "cameras", "list").stdout

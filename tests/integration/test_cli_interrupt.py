"""Ctrl-C during `faec-rec enrol` on the embedded default (real model, real photos):
a short message saying what was done, exit 130, no traceback, and the private
Redis left to another command that uses it at the same time."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PEOPLE = ("George_W_Bush", "Colin_Powell", "Tony_Blair", "Donald_Rumsfeld")


def test_ctrl_c_during_enrol_ends_cleanly_and_spares_the_other_command(faces_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "people"
    for folder in PEOPLE:
        (root / folder.replace("_", " ")).mkdir(parents=True)
        for photo in sorted((faces_dir / "lfw" / folder).glob("*.jpg"))[:4]:
            (root / folder.replace("_", " ") / photo.name).symlink_to(photo)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAEC_")}
    # one person per task: the Ctrl-C after the first person lands while the second is judged (batches of
    # people end together, so most folders of a few people would be done before the signal)
    env.update(HOME=str(tmp_path), FAEC_DATA_DIR=str(tmp_path / "data"), TF_CPP_MIN_LOG_LEVEL="2",
               FAEC_WORKERS__FOLDER_BATCH="1")
    script = Path(sys.executable).with_name("faec-rec")
    cli = [str(script)] if script.exists() else [sys.executable, "-m", "faec_rec.cli"]
    follower = subprocess.Popen([*cli, "events", "--follow"], env=env, text=True, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
    enrol = subprocess.Popen([*cli, "enrol", "--folder", str(root)], env=env, text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, start_new_session=True)
    try:
        lines = []
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline:  # the first person done: the second is in hand
            line = enrol.stdout.readline()
            lines.append(line)
            if ": " in line and "accepted," in line or not line:
                break
        assert any("accepted," in line for line in lines), lines
        os.killpg(enrol.pid, signal.SIGINT)  # Ctrl-C in its terminal
        out, err = enrol.communicate(timeout=300)
        out = "".join(lines) + out
        assert enrol.returncode == 130, err
        assert "Traceback" not in err and len(err.splitlines()) < 15, err
        assert "interrupted" in err and "of 4 people done" in err, err
        # every person reported as enrolled is in the gallery, and only those
        people = subprocess.run([*cli, "people", "list", "--json"], env=env, capture_output=True, text=True,
                                timeout=120)
        assert people.returncode == 0, people.stderr
        import json

        enrolled = {p["name"] for p in json.loads(people.stdout)}
        reported = {line.split(" (")[0] for line in out.splitlines() if " accepted," in line}
        assert enrolled == reported, (enrolled, out)
        assert follower.poll() is None  # the other command still runs
    finally:
        if follower.poll() is None:
            os.killpg(follower.pid, signal.SIGINT)
        assert follower.wait(60) == 130
        if enrol.poll() is None:
            os.killpg(enrol.pid, signal.SIGKILL)

"""File names that are not valid UTF-8 (byte 0xe9 in a Latin-1 name), through the
embedded CLI with the real model: every image gets its result, the report is
written and names the file losslessly, enrol works and leaves no empty folder."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ODD = b"caf\xe9_photo.jpg"


def test_non_utf8_file_names_get_results_and_a_report(faces_dir: Path, tmp_path: Path) -> None:
    photos = sorted((faces_dir / "lfw" / "Colin_Powell").glob("*.jpg"))
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "plain.jpg").write_bytes(photos[1].read_bytes())
    odd = os.path.join(os.fsencode(folder), ODD)
    with open(odd, "wb") as fh:
        fh.write(photos[0].read_bytes())
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAEC_")}
    env.update(HOME=str(tmp_path), FAEC_DATA_DIR=str(tmp_path / "data"), TF_CPP_MIN_LOG_LEVEL="2")
    script = Path(sys.executable).with_name("faec-rec")
    cli = [str(script)] if script.exists() else [sys.executable, "-m", "faec_rec.cli"]

    out = subprocess.run([*cli, "identify", str(folder), "--report", str(tmp_path / "r.json"),
                          "--html", str(tmp_path / "r.html"), "--timeout", "120"],
                         env=env, capture_output=True, timeout=400)
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    report = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    by_name = {Path(i["path"]).name: i for i in report["images"]}
    assert set(by_name) == {"plain.jpg", "caf\\xe9_photo.jpg"}, by_name
    odd_entry = by_name["caf\\xe9_photo.jpg"]
    assert odd_entry["error"] is None and odd_entry["faces"], odd_entry
    assert base64.b64decode(odd_entry["path_bytes"]) == odd  # lossless
    # the stranger in it is kept as an unknown face like any other (its source stored as caf\xe9...)
    assert all(f.get("visitor") for f in odd_entry["faces"] if f["decision"] == "unknown"), odd_entry
    html = (tmp_path / "r.html").read_text(encoding="utf-8")
    # the odd file was read back for its thumbnail (the strangers' crops under "Strangers by visitor" aside)
    assert html.count("data:image/jpeg;base64,") - html.count('<img class="vc"') == 2

    out = subprocess.run([*cli, "enrol", "Colin Powell", odd.decode("utf-8", "surrogateescape")],
                         env=env, capture_output=True, timeout=400)
    text = out.stdout.decode("utf-8")  # valid UTF-8: the name shown as caf\xe9
    assert out.returncode == 0, text + out.stderr.decode(errors="replace")
    assert "accepted  " in text and "caf\\xe9_photo.jpg" in text, text
    crops = tmp_path / "data" / "crops"
    folders = [p for p in crops.iterdir()]
    assert len(folders) == 1 and any(folders[0].iterdir())

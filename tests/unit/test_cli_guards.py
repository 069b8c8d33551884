"""Output paths and settings checked before any work: a clear one-line error and
exit 2, never a traceback after the job (issue 17 item 16)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from faec_rec import cli


def _run(tmp_path: Path, *args: str, **env: str | None) -> tuple[int, str]:
    base: dict[str, str | None] = {"HOME": str(tmp_path), "FAEC_DATA_DIR": str(tmp_path / "data"), "FAEC_REDIS_URL": None,
            "FAEC_CONFIG": None, "FAEC_PREFIX": None}
    base.update(env)
    result = CliRunner().invoke(cli.cli, list(args), env=base, catch_exceptions=True)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "victim.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 a photo")
    return path


def test_the_report_may_not_overwrite_an_input(tmp_path: Path, photo: Path) -> None:
    code, out = _run(tmp_path, "identify", str(photo), "--report", str(photo))
    assert code == 2 and "is an input" in out, out
    assert photo.read_bytes() == b"\xff\xd8\xff\xe0 a photo"
    # the same file under another spelling, inside a folder given as input
    code, out = _run(tmp_path, "identify", str(tmp_path), "--report", str(tmp_path / "." / "victim.jpg"))
    assert code == 2 and "is an input" in out, out


def test_report_and_html_must_differ(tmp_path: Path, photo: Path) -> None:
    code, out = _run(tmp_path, "identify", str(photo), "--report", str(tmp_path / "x"), "--html", str(tmp_path / "x"))
    assert code == 2 and "same file" in out, out


@pytest.mark.parametrize("where", ["/proc/r.json", "{tmp}/victim.jpg/r.json"])
def test_unwritable_report_paths_are_refused_before_the_job(tmp_path: Path, photo: Path, where: str) -> None:
    code, out = _run(tmp_path, "identify", str(photo), "--report", where.format(tmp=tmp_path))
    assert code == 2 and "cannot be written" in out, out
    assert not (tmp_path / "data").exists()  # refused before the backend started


def test_a_binary_config_file_is_a_usage_error(tmp_path: Path) -> None:
    config = tmp_path / "conf.toml"
    config.write_bytes(os.urandom(64) + b"\xff\xfe")
    code, out = _run(tmp_path, "people", "list", FAEC_CONFIG=str(config))
    assert code == 2 and "not UTF-8" in out, out


def test_a_data_folder_that_is_a_file_is_a_usage_error(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    code, out = _run(tmp_path, "people", "list", FAEC_DATA_DIR=str(not_a_folder))
    assert code == 2 and "data folder" in out and "not a folder" in out, out

"""Usage errors exit 2 as the README says, and the Python client answers at once
when there is nothing to wait for (issue 17 item 22). Real Redis, no model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from faec_rec import cli
from faec_rec.client import Client
from faec_rec.config import GalleryConfig, load_settings
from faec_rec.errors import UnknownJobError
from faec_rec.index import Gallery


def _invoke(redis_url: str, prefix: str, tmp_path: Path, *args: str) -> tuple[int, str]:
    cli._register_plugins()
    env = {"FAEC_REDIS_URL": redis_url, "FAEC_PREFIX": prefix, "FAEC_DATA_DIR": str(tmp_path / "data"),
           "FAEC_CONFIG": None, "HOME": str(tmp_path)}
    result = CliRunner().invoke(cli.cli, list(args), env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.output


def _enrol(redis_client, keys, tmp_path: Path, name: str, seed: int) -> str:
    gallery = Gallery(redis_client, keys, GalleryConfig(), tmp_path / "data")
    x = np.random.default_rng(seed).normal(size=(1, 128)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return gallery.enrol(name, x, sources=["a.jpg"], content_hashes=[f"{name}-h"]).person_id


@pytest.mark.parametrize("args, says", [
    (("models", "show", "v999"), "no model version"),
    (("models", "promote", "v999"), "no model version"),
    (("models", "rollback"), "nothing to roll back"),
    (("feedback", "not-an-id", "--is", "Ada"), "not an event id"),
    (("feedback", "1-0", "--is", "Ada"), "was not found"),
    (("camera", "door=a.mp4", "door=b.mp4", "--duration", "1"), "unique"),
])
def test_usage_errors_exit_2(redis_url: str, prefix: str, redis_client, keys, tmp_path: Path,
                             args: tuple[str, ...], says: str) -> None:
    _enrol(redis_client, keys, tmp_path, "Ada", 1)
    code, out = _invoke(redis_url, prefix, tmp_path, *args)
    assert code == 2 and says in out, (code, out)


def test_renaming_to_a_taken_name_exits_2(redis_url: str, prefix: str, redis_client, keys, tmp_path: Path) -> None:
    _enrol(redis_client, keys, tmp_path, "Ada", 1)
    _enrol(redis_client, keys, tmp_path, "Bob", 2)
    code, out = _invoke(redis_url, prefix, tmp_path, "people", "rename", "Bob", "Ada")
    assert code == 2 and "already belongs" in out, out


@pytest.mark.timeout(120)
def test_the_client_does_not_wait_for_nothing(redis_url: str, prefix: str, redis_client, tmp_path: Path) -> None:
    client = Client(settings=load_settings(redis_url=redis_url, prefix=prefix, data_dir=tmp_path))
    try:
        empty = tmp_path / "empty"
        empty.mkdir()
        # no worker runs: with the old code both calls waited their whole (hour-long) timeout
        assert client.identify_folder(empty, wait=True, timeout=3600) == []
        with pytest.raises(UnknownJobError, match="no job"):
            client.job_results("job-unknown", wait=True, timeout=3600)
    finally:
        client.close()

"""`people faces NAME` and `people remove-face ID` (issue 17 item 21) on a real Redis."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from click.testing import CliRunner

from faec_rec.config import load_settings


def test_list_and_remove_one_template_through_the_client_and_the_cli(redis_url, prefix, tmp_path: Path, rng) -> None:
    from faec_rec import cli
    from faec_rec.client import Client

    settings = load_settings(redis_url=redis_url, prefix=prefix, data_dir=tmp_path)
    client = Client(settings=settings)
    try:
        feats = (0.9 * rng.normal(size=(3, 128)) / np.sqrt(128)).astype(np.float32)
        client.gallery.enrol("Ada Lovelace", feats, sources=["a.jpg", "b.jpg", "biden.jpg"],
                             content_hashes=["h1", "h2", "h3"], qualities=[0.9, 0.8, 0.7])
        faces = client.person_faces("ada lovelace")
        assert [f["source"] for f in faces] == ["a.jpg", "b.jpg", "biden.jpg"]
        assert faces[2]["quality"] == 0.7 and all(f["id"] for f in faces)

        cli._register_plugins()  # as main() does
        env = {"FAEC_REDIS_URL": redis_url, "FAEC_PREFIX": prefix, "FAEC_DATA_DIR": str(tmp_path)}
        listed = CliRunner().invoke(cli.cli, ["people", "faces", "Ada Lovelace"], env=env)
        assert listed.exit_code == 0, listed.output
        assert faces[2]["id"] in listed.output and "biden.jpg" in listed.output and "3 template(s)" in listed.output
        removed = CliRunner().invoke(cli.cli, ["people", "remove-face", faces[2]["id"], "--yes"], env=env)
        assert removed.exit_code == 0, removed.output
        assert [f["source"] for f in client.person_faces("Ada Lovelace")] == ["a.jpg", "b.jpg"]
        again = CliRunner().invoke(cli.cli, ["people", "remove-face", faces[2]["id"], "--yes"], env=env)
        assert again.exit_code != 0 and faces[2]["id"] in again.output
    finally:
        client.close()

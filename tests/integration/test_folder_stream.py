"""Folder jobs stream (issue 14): the client consumes a walk as room frees up, never the whole
folder before the first task, and a job fed by a walk is complete only when the walk is.
Real Redis; no worker, so the window fills and the client stops asking for images."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from faec_rec.client import Client
from faec_rec.config import load_settings
from faec_rec.errors import TaskTimeout


@pytest.fixture
def client(redis_url: str, prefix: str, redis_client, tmp_path: Path):
    c = Client(settings=load_settings(redis_url=redis_url, prefix=prefix, data_dir=tmp_path,
                                      workers={"folder_batch": 2}))
    yield c
    c.close()


def test_a_walk_is_consumed_only_as_far_as_the_window_allows(client: Client, tmp_path: Path) -> None:
    taken: list[int] = []

    def walk() -> Iterator[bytes]:
        for i in range(10_000):
            taken.append(i)
            yield b"\x89PNG\r\n\x1a\n not really" + bytes([i % 256])

    with pytest.raises(TaskTimeout, match="3 uploads waited"):
        client.submit_images(walk(), job="walk1", window=3, window_timeout=1.0)
    assert len(taken) == 4  # 3 uploaded, the 4th waits for room: not 10,000
    job = client.redis.hgetall(client.keys.job("walk1"))
    # one batch of 2 queued and counted; the third upload waits in hand for the batch to fill
    assert int(job[b"total"]) == 2 and job[b"open"] == b"1"
    assert client.redis.llen(client.keys.celery() + "frames") == 1
    # an open job is not complete, even with as many records as its total so far
    with pytest.raises(TaskTimeout):
        client.job_results("walk1", wait=True, timeout=1.0)


def test_a_walked_job_counts_refusals_and_closes_when_the_walk_ends(client: Client, tmp_path: Path) -> None:
    bad = tmp_path / "empty.jpg"
    bad.touch()
    job = client.submit_images(iter([bad, tmp_path / "missing.jpg"]), window=8)
    fields = client.redis.hgetall(client.keys.job(job))
    assert b"open" not in fields and int(fields[b"total"]) == 2
    records = client.job_results(job, wait=True, timeout=5)
    assert sorted(Path(r["path"]).name for r in records) == ["empty.jpg", "missing.jpg"]
    assert all(r["error"] for r in records)


def test_identify_folder_streams_the_folder_walk(client: Client, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    for sub in ("a", "b"):
        (folder / sub).mkdir(parents=True)
        (folder / sub / "x.jpg").touch()  # empty: refused by the client, reported per image
    (folder / "notes.txt").write_text("not an image")
    records = client.identify_folder(folder, wait=True, timeout=5)
    assert sorted(r["path"] for r in records) == [str(folder / "a" / "x.jpg"), str(folder / "b" / "x.jpg")]
    assert all(r["error"] == "empty file" for r in records)
    job_keys = [k for k in client.redis.scan_iter(match=client.keys.job("x")[:-1] + "*") if client.redis.type(k) == b"hash"]
    assert [client.redis.hget(k, "skipped") for k in job_keys] == [b"1"]

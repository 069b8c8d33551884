"""The Python client's uploads (issue 17 item 2): the engine's byte and pixel caps
apply before anything reaches Redis, a batch is uploaded through a bounded window
(never all of it before the first task), and Redis memory is a metric. Real Redis."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from faec_rec import metrics
from faec_rec.client import Client
from faec_rec.config import load_settings
from faec_rec.errors import ImageError, TaskTimeout


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr
            + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) + b"\x00" * 64)


@pytest.fixture
def client(redis_url: str, prefix: str, redis_client, tmp_path: Path):
    settings = load_settings(redis_url=redis_url, prefix=prefix, data_dir=tmp_path,
                             faces={"max_image_bytes": 4096, "max_image_pixels": 1_000_000})
    c = Client(settings=settings)
    yield c
    c.close()


def _uploads(client: Client) -> int:
    return sum(1 for _ in client.redis.scan_iter(match=client.keys.upload("x")[:-1] + "*"))


def test_caps_refuse_before_anything_is_stored(client: Client, tmp_path: Path) -> None:
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff\xd8" + b"\x00" * 5000)
    with pytest.raises(ImageError, match="max_image_bytes"):
        client.upload(big)
    with pytest.raises(ImageError, match="max_image_pixels"):
        client.upload(_png_header(20_000, 20_000))  # a decompression bomb's header
    assert _uploads(client) == 0
    # in a batch: that image gets its error record, the others go on
    job = client.submit_images([big, _png_header(10, 10)], window=8)
    records = client.job_results(job)
    assert [r["path"] for r in records] == [str(big)] and "max_image_bytes" in records[0]["error"]
    assert _uploads(client) == 1


def test_a_batch_is_uploaded_through_a_bounded_window(client: Client) -> None:
    images = [_png_header(10, 10) + bytes([i]) for i in range(20)]
    # no worker consumes: the window fills, then the client waits (here: gives up)
    with pytest.raises(TaskTimeout, match="3 uploads waited"):
        client.submit_images(images, window=3, window_timeout=1.0)
    assert _uploads(client) == 3  # not 20: the rest never reached Redis
    # queued as soon as a batch is full (workers.folder_batch, capped by the window): one task of 3
    assert client.redis.llen(client.keys.celery() + "frames") == 1


def test_one_image_per_task_when_batching_is_off(redis_url: str, prefix: str, redis_client, tmp_path: Path) -> None:
    settings = load_settings(redis_url=redis_url, prefix=prefix, data_dir=tmp_path, workers={"folder_batch": 1})
    with Client(settings=settings) as client:
        with pytest.raises(TaskTimeout, match="3 uploads waited"):
            client.submit_images([_png_header(10, 10) + bytes([i]) for i in range(20)], window=3, window_timeout=1.0)
        assert client.redis.llen(client.keys.celery() + "frames") == 3  # each queued as soon as uploaded


def test_redis_memory_is_a_metric(client: Client) -> None:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    registry.register(metrics.RedisCollector(client.redis, client.keys))
    assert registry.get_sample_value("faec_redis_memory_used_bytes") > 0
    assert registry.get_sample_value("faec_redis_memory_max_bytes") is not None

"""A TCP proxy that delays every chunk, each direction, by DELAY ± JITTER ms (order kept),
standing in for ``tc netem`` where the kernel lacks ``sch_netem``.

    python -m tests.cluster.delay_proxy LISTEN_HOST:PORT UPSTREAM_HOST:PORT CONTROL_FILE

CONTROL_FILE holds ``delay_ms jitter_ms loss_pct`` and is re-read every 0.5 s, so a run
can change the link without reconnecting. Loss is emulated as TCP would show it to the
application: a chunk "lost" with probability loss_pct arrives one retransmission
timeout (200 ms) late. Unlike netem it acts per chunk read, not per packet.
"""
from __future__ import annotations

import asyncio
import random
import sys
import time
from pathlib import Path

RTO_S = 0.2


class Link:
    def __init__(self, control: Path) -> None:
        self.control = control
        self.values = (0.0, 0.0, 0.0)
        self.read_at = 0.0

    def now(self) -> tuple[float, float, float]:
        if time.monotonic() - self.read_at > 0.5:
            self.read_at = time.monotonic()
            try:
                d, j, loss = (float(x) for x in self.control.read_text().split()[:3])
                self.values = (d, j, loss)
            except (OSError, ValueError):
                pass
        return self.values


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: Link) -> None:
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def send() -> None:
        while True:
            at, data = await queue.get()
            if not data:
                break
            wait = at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        writer.close()

    sender = asyncio.create_task(send())
    last = 0.0
    try:
        while True:
            data = await reader.read(65536)
            delay, jitter, loss = link.now()
            extra = RTO_S if loss and random.random() * 100 < loss else 0.0
            at = max(last, time.monotonic() + max(0.0, delay + random.uniform(-jitter, jitter)) / 1000 + extra)
            last = at
            await queue.put((at, data))
            if not data:
                break
    except (ConnectionError, OSError):
        await queue.put((0.0, b""))
    await sender


async def main(listen: str, upstream: str, control: Path) -> None:
    link = Link(control)
    up_host, up_port = upstream.rsplit(":", 1)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(up_host, int(up_port))
        except OSError:
            writer.close()
            return
        await asyncio.gather(pump(reader, up_writer, link), pump(up_reader, writer, link), return_exceptions=True)

    host, port = listen.rsplit(":", 1)
    server = await asyncio.start_server(handle, host, int(port))
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], Path(sys.argv[3])))

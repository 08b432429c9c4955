"""A TCP relay that adds latency: makes a healthy subsystem a slow one, for fault tests.

    with latency_relay(target_port=9101, delay=0.3) as relay:
        ...  # register relay.url as the subsystem's endpoint; relay.chunks counts data moved

Every chunk is delivered `delay` seconds after it was read, in order, in both
directions, like a long network path (not `delay` per chunk one after another, which
would make big answers arbitrarily slow). Runs its own event loop in a thread, so
synchronous tests can use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

CHUNK_BYTES = 65536


@dataclass
class LatencyRelay:
    url: str
    delay: float
    # Chunks delivered so far, both directions: proof that traffic went through the relay.
    chunks: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _count(self) -> None:
        with self._lock:
            self.chunks += 1


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, relay: LatencyRelay
) -> None:
    """Copy reader -> writer, each chunk held until `delay` after it arrived."""
    line: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, data = await line.get()
            if not data:
                break
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            writer.write(data)
            await writer.drain()
            relay._count()
        # Pass the half-close on (h2 does not use it, HTTP/1.1 clients may).
        with contextlib.suppress(OSError):
            if writer.can_write_eof():
                writer.write_eof()

    delivery = asyncio.create_task(deliver())
    try:
        while data := await reader.read(CHUNK_BYTES):
            await line.put((time.monotonic() + relay.delay, data))
        await line.put((time.monotonic() + relay.delay, b""))
        await delivery
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        delivery.cancel()
        await asyncio.gather(delivery, return_exceptions=True)


async def _serve(relay: LatencyRelay, target_port: int, started: asyncio.Future[int]) -> None:
    async def handle(client_reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream = await asyncio.open_connection("127.0.0.1", target_port)
        except OSError:
            client.close()  # nothing listens yet: refuse, as the real endpoint would
            return
        try:
            await asyncio.gather(
                _pipe(client_reader, upstream, relay), _pipe(upstream_reader, client, relay)
            )
        finally:
            for writer in (client, upstream):
                writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    started.set_result(server.sockets[0].getsockname()[1])
    async with server:
        await server.serve_forever()


@contextlib.contextmanager
def latency_relay(target_port: int, delay: float) -> Iterator[LatencyRelay]:
    """Listen on a free loopback port and relay to 127.0.0.1:`target_port` with `delay`."""
    loop = asyncio.new_event_loop()
    started: asyncio.Future[int] = loop.create_future()
    relay = LatencyRelay(url="", delay=delay)
    task = loop.create_task(_serve(relay, target_port, started))
    thread = threading.Thread(target=loop.run_forever, name="latency-relay", daemon=True)
    thread.start()
    try:
        port = asyncio.run_coroutine_threadsafe(_started(started), loop).result(10)
        relay.url = f"http://127.0.0.1:{port}"
        yield relay
    finally:
        loop.call_soon_threadsafe(task.cancel)

        async def drain() -> None:
            # Open connections' tasks end with the cancelled server; let them go first.
            await asyncio.gather(task, return_exceptions=True)
            pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for pending_task in pending:
                pending_task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(drain(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


async def _started(started: asyncio.Future[int]) -> int:
    return await started

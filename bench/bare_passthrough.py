"""The floor under a routed call through pyvoy: a bare byte passthrough.

`bench/routed_proxy.py` runs it as `bare`. An ASGI app under pyvoy that reads the
request body, sends it through the Envoy it runs in (the same ORIGINAL_DST h2c
cluster as the gateway's Envoy leg) to one fixed subsystem, and returns the answer
as it is: no routing, no checks, no metrics, no CORS. What is left is what pyvoy's
hand-off between Envoy and Python costs by itself, which no gateway written as an
ASGI app under pyvoy can go below.

    python bench/bare_passthrough.py PORT HOST:PORT
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile

import pyqwest
from starlette.types import Receive, Scope, Send

from flowwatch_gateway.serving.envoy_admin import PrivateAdminPyvoyServer
from flowwatch_gateway.serving.envoy_leg import CLUSTERS, DESTINATION_HEADER, envoy_clusters

DESTINATION_ENV = "BARE_PASSTHROUGH_DESTINATION"
_transport: pyqwest.Transport | None = None


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    global _transport
    if scope["type"] != "http":
        return
    destination = os.environ[DESTINATION_ENV]
    message = await receive()
    if _transport is None:
        from pyvoy.asgi.httpclient import HTTPTransport  # exists only inside Envoy

        _transport = HTTPTransport(CLUSTERS["h2c"], timeout=10)
    content_type: bytes = next((v for n, v in scope["headers"] if n == b"content-type"), b"")
    sent: dict[str | pyqwest.HTTPHeaderName, str] = {
        "content-type": content_type.decode(),
        "connect-protocol-version": "1",
        DESTINATION_HEADER: destination,
    }
    request = pyqwest.Request(
        "POST", f"http://{destination}{scope['path']}", pyqwest.Headers(sent), message["body"]
    )
    response = await _transport.execute(request)
    body = b"".join([bytes(chunk) async for chunk in response.content])
    answer_type = (response.headers.get("content-type") or "").encode()
    await send(
        {
            "type": "http.response.start",
            "status": response.status,
            "headers": [(b"content-type", answer_type)],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def serve(port: int, destination: str) -> int:
    with tempfile.TemporaryDirectory(prefix="bare-passthrough-") as private_dir:
        return await _serve(port, destination, private_dir)


async def _serve(port: int, destination: str, private_dir: str) -> int:
    server = PrivateAdminPyvoyServer(
        "bare_passthrough:app",  # this file; bench/ is on the path pyvoy hands to Envoy
        private_dir=private_dir,
        address="127.0.0.1",
        port=port,
        worker_threads=1,  # as the gateway
        lifespan=False,
        upstreams=envoy_clusters(),
        env={DESTINATION_ENV: destination},
        stdout=None,
        stderr=None,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await server.start()
    exited = asyncio.create_task(server.wait())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not stop.is_set():
        return 1
    await server.stop()
    await exited
    return 0


def main() -> int:
    if len(sys.argv) != 3:
        print("usage: bare_passthrough.py PORT HOST:PORT", file=sys.stderr)
        return 2
    return asyncio.run(serve(int(sys.argv[1]), sys.argv[2]))


if __name__ == "__main__":
    sys.exit(main())

"""A hostile subsystem: every answer is 200 with the right content type and never ends.

Unary calls get `application/proto` and an endless body; streams get
`application/connect+proto`, a message prefix declaring 2 GiB, then endless bytes.
It speaks h2c (prior knowledge, honouring flow control) and HTTP/1.1 (chunked), and
prints one line per call when the gateway stops it:

    CUT <path> <bytes sent>

so a test can see that each call was cut off, and how much it had taken. `GET
/healthz` answers `ok` (for the harness's readiness wait).

    python -m tests.support.hostile --port 9301
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import struct
import sys

import h2.config
import h2.connection
import h2.events
import h2.exceptions

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME = 16 * 1024
DECLARED = 2**31  # what a stream's first message claims to carry
STREAM_TYPES = (b"application/connect+", b"application/grpc")


def cut(path: str, sent: int) -> None:
    print(f"CUT {path} {sent}", flush=True)


class H2Peer:
    """One h2c connection: each request gets its endless answer once its body is in."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self.conn = h2.connection.H2Connection(config)
        self.window = asyncio.Event()
        self.requests: dict[int, tuple[str, bool]] = {}
        self.open: set[int] = set()
        self.tasks: set[asyncio.Task[None]] = set()

    async def run(self, first: bytes) -> None:
        self.conn.initiate_connection()
        self.flush()
        data = first
        try:
            while data:
                for event in self.conn.receive_data(data):
                    self.on(event)
                self.flush()
                await self.writer.drain()
                data = await self.reader.read(65536)
        except (ConnectionError, h2.exceptions.ProtocolError):
            pass
        finally:
            self.open.clear()
            self.window.set()
            for task in list(self.tasks):
                with contextlib.suppress(BaseException):
                    await task

    def on(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            headers = dict(event.headers or [])
            content_type = bytes(headers.get(b"content-type", b""))
            streaming = content_type.startswith(STREAM_TYPES)
            self.requests[event.stream_id] = (bytes(headers[b":path"]).decode(), streaming)
        elif isinstance(event, h2.events.DataReceived):
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            path, stream = self.requests.pop(event.stream_id)
            self.open.add(event.stream_id)
            task = asyncio.ensure_future(self.answer(event.stream_id, path, stream))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        elif isinstance(event, h2.events.StreamReset):
            self.open.discard(event.stream_id)
            self.window.set()
        elif isinstance(event, h2.events.WindowUpdated):
            self.window.set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.open.clear()
            self.window.set()

    def flush(self) -> None:
        out = self.conn.data_to_send()
        if out:
            self.writer.write(out)

    async def answer(self, stream_id: int, path: str, stream: bool) -> None:
        content_type = "application/connect+proto" if stream else "application/proto"
        sent = 0
        try:
            self.conn.send_headers(stream_id, [(":status", "200"), ("content-type", content_type)])
            if stream:
                self.conn.send_data(stream_id, struct.pack(">BI", 0, DECLARED))
                sent += 5
            self.flush()
            while stream_id in self.open:
                room = min(self.conn.local_flow_control_window(stream_id), FRAME)
                if room <= 0:
                    self.window.clear()
                    await self.window.wait()
                    continue
                self.conn.send_data(stream_id, bytes(room))
                sent += room
                self.flush()
                await self.writer.drain()
        except (ConnectionError, h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError):
            pass
        finally:
            cut(path, sent)


async def http1(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bytes) -> None:
    data = first
    while b"\r\n\r\n" not in data:
        more = await reader.read(65536)
        if not more:
            return
        data += more
    head = data.split(b"\r\n\r\n", 1)[0]
    path = head.split(b"\r\n", 1)[0].split(b" ")[1].decode()
    if path == "/healthz":
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
        await writer.drain()
        return
    stream = any(
        line.lower().startswith(b"content-type: " + kind)
        for line in head.split(b"\r\n")
        for kind in STREAM_TYPES
    )
    content_type = b"application/connect+proto" if stream else b"application/proto"
    head = b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ntransfer-encoding: chunked\r\n\r\n"
    writer.write(head % content_type)
    sent = 0
    chunk = b"%x\r\n" % FRAME + bytes(FRAME) + b"\r\n"
    try:
        if stream:
            writer.write(b"5\r\n" + struct.pack(">BI", 0, DECLARED) + b"\r\n")
            sent += 5
        while True:
            writer.write(chunk)
            sent += FRAME
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        cut(path, sent)


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        first = await reader.read(len(PREFACE))
        if first.startswith(PREFACE[: len(first)]) and first:
            while len(first) < len(PREFACE):
                more = await reader.read(len(PREFACE) - len(first))
                if not more:
                    return
                first += more
            await H2Peer(reader, writer).run(first)
        elif first:
            await http1(reader, writer, first)
    except ConnectionError:
        pass
    finally:
        writer.close()


async def serve(port: int) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    print(f"LISTENING {port}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port))
    sys.exit(0)


if __name__ == "__main__":
    main()

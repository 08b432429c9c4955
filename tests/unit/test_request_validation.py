"""Requests no backend could answer are refused by the shared service layer."""

from __future__ import annotations

import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError

from flowwatch_gateway.api.limits import MAX_BULK_RUN_IDS
from flowwatch_gateway.api.services import validate_request
from flowwatch_gateway.gen.flowwatch.v1 import run_service_pb2 as runs


@pytest.mark.parametrize(
    ("rpc", "request_type"),
    [("BulkCancel", runs.BulkCancelRequest), ("BulkRetry", runs.BulkRetryRequest)],
)
def test_bulk_actions_are_capped_with_a_message_that_says_what_to_do(
    rpc: str, request_type: type[runs.BulkCancelRequest] | type[runs.BulkRetryRequest]
) -> None:
    validate_request(rpc, request_type(run_ids=[f"r{i}" for i in range(MAX_BULK_RUN_IDS)]))
    with pytest.raises(ConnectError) as too_many:
        validate_request(rpc, request_type(run_ids=[f"r{i}" for i in range(MAX_BULK_RUN_IDS + 1)]))
    assert too_many.value.code == Code.INVALID_ARGUMENT
    assert "at most 1000" in too_many.value.message
    assert "split" in too_many.value.message

"""Every cursor the gateway issues, in one place: the sealed envelope and its formats.

A gateway cursor is `<version>.<base64url payload>.<checksum>`. Versions: `g2`
ListRuns (the sort key of the last run handed out: its size does not grow with the
number of subsystems), `l1` an offset into a merged list (ListWorkflows), `s1` an
offset into merged search results. A cursor of one kind is refused where another is
expected, and every refusal is `invalid_argument` (CursorError) with a message that
says to start again without a cursor.

The checksum is an HMAC-SHA256 prefix keyed with the gateway's cursor key (random
per process unless GATEWAY_CURSOR_KEY sets one for every replica), so a client
cannot mint cursors: what a cursor carries is relayed to subsystems as a filter.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any, TypeGuard

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from flowwatch_gateway.api.ordering import OrderField, RunSortKey
from flowwatch_gateway.gen.flowwatch.v1 import run_service_pb2

CURSOR_VERSION = "g2"
LIST_CURSOR_VERSION = "l1"
SEARCH_CURSOR_VERSION = "s1"


# Longer than any cursor this gateway issues (about 150 characters plus one run id).
MAX_CURSOR_CHARS = 4096


NOT_ISSUED_MESSAGE = "cursor is not one this gateway issued; start again without a cursor"


_CHECKSUM_BYTES = 9  # 12 base64url characters


class CursorError(ConnectError):
    """A client-supplied cursor the gateway cannot use; always invalid_argument."""

    def __init__(self, message: str) -> None:
        super().__init__(Code.INVALID_ARGUMENT, message)


@dataclass(frozen=True)
class ListRunsCursor:
    """Where a ListRuns paging stands: after `after`, in the query `query` fingerprints.

    `after` is the sort key (primary value, started_at ns, run id) of the last run
    handed out; `total` is the total count the first page reported.
    """

    query: str
    after: RunSortKey
    total: int


def query_fingerprint(
    run_filter: run_service_pb2.RunFilter, field: OrderField, descending: bool
) -> str:
    """A short digest of what makes a ListRuns query; a cursor is only valid for the same one.

    Pass the order as resolved by `ordering.resolve_order`, so "" and "started_at"
    descending count as the same query.
    """
    digest = hashlib.sha256()
    digest.update(run_filter.SerializeToString(deterministic=True))
    digest.update(b"\x00" + field.encode() + b"\x00" + (b"desc" if descending else b"asc"))
    return _b64encode(digest.digest()[:12])


def encode_cursor(cursor: ListRunsCursor, *, secret: bytes) -> str:
    """`g2.<base64url compact JSON>.<checksum>` (see seal_token): url-safe, deterministic."""
    primary, started, run_id = cursor.after
    payload = json.dumps(
        {"q": cursor.query, "k": [primary, started, run_id], "t": cursor.total},
        separators=(",", ":"),
        ensure_ascii=True,
    ).encode()
    return seal_token(CURSOR_VERSION, payload, secret=secret)


def decode_cursor(token: str, *, secret: bytes) -> ListRunsCursor:
    """Parse a cursor from encode_cursor; anything else raises CursorError."""
    return _cursor_from_document(_json_document(unseal_token(token, CURSOR_VERSION, secret=secret)))


def resume_cursor(token: str, query: str, *, secret: bytes) -> ListRunsCursor | None:
    """The state to continue from for a request's cursor; None for "" (first page).

    Raises CursorError for a cursor not issued by the gateway or issued for a
    different filter/order.
    """
    if token == "":
        return None
    state = decode_cursor(token, secret=secret)
    if state.query != query:
        raise CursorError(
            "cursor was issued for a different query (filter or order changed); "
            "start again without a cursor"
        )
    return state


def seal_token(version: str, payload: bytes, *, secret: bytes) -> str:
    """`<version>.<base64url payload>.<checksum>`: the envelope of every gateway cursor."""
    body = _b64encode(payload)
    return f"{version}.{body}.{_checksum(version, body, secret)}"


def unseal_token(token: str, version: str, *, secret: bytes) -> bytes:
    """The payload of a token from seal_token with this version; CursorError otherwise."""
    # Every cursor issued is ASCII; anything else would reach hmac.compare_digest and
    # str.encode (TypeError, UnicodeEncodeError: `internal`) instead of a refusal.
    if len(token) > MAX_CURSOR_CHARS or not token.isascii():
        raise CursorError(NOT_ISSUED_MESSAGE)
    parts = token.split(".")
    if len(parts) != 3:
        raise CursorError(NOT_ISSUED_MESSAGE)
    found_version, body, checksum = parts
    if found_version != version:
        raise CursorError(
            f"cursor version {found_version[:10]!r} is not one this gateway issues here "
            f"(expected {version!r}); start again without a cursor"
        )
    if not hmac.compare_digest(checksum, _checksum(version, body, secret)):
        raise CursorError(NOT_ISSUED_MESSAGE)
    try:
        return _b64decode(body)
    except ValueError as exc:
        raise CursorError(NOT_ISSUED_MESSAGE) from exc


def _cursor_from_document(document: dict[str, Any]) -> ListRunsCursor:
    """Validate the decoded JSON strictly: a checksum match is not proof of shape."""
    if set(document) != {"q", "k", "t"}:
        raise CursorError(NOT_ISSUED_MESSAGE)
    query, key, total = document["q"], document["k"], document["t"]
    if not isinstance(query, str) or not _is_count(total) or not isinstance(key, list):
        raise CursorError(NOT_ISSUED_MESSAGE)
    if len(key) != 3:
        raise CursorError(NOT_ISSUED_MESSAGE)
    primary, started, run_id = key
    if not _is_int(primary) or not _is_int(started) or not isinstance(run_id, str):
        raise CursorError(NOT_ISSUED_MESSAGE)
    return ListRunsCursor(query, (primary, started, run_id), total)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _checksum(version: str, body: str, secret: bytes) -> str:
    mac = hmac.new(secret, f"{version}.{body}".encode(), hashlib.sha256)
    return _b64encode(mac.digest()[:_CHECKSUM_BYTES])


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    """Strict url-safe base64 without padding; raises ValueError on anything else."""
    try:
        padded = text + "=" * (-len(text) % 4)
        data = base64.b64decode(padded.encode("ascii"), altchars=b"-_", validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError("not base64url") from exc
    if _b64encode(data) != text:
        raise ValueError("non-canonical base64url")
    return data


# --------------------------------------------------------------------------- offsets


def offset_cursor(offset: int, *, secret: bytes, query: str | None = None) -> str:
    """An `l1` cursor (offset into a merged list) or, with `query`, an `s1` search cursor."""
    if query is None:
        return seal_token(LIST_CURSOR_VERSION, json.dumps({"o": offset}).encode(), secret=secret)
    document = {"o": offset, "q": query}
    return seal_token(SEARCH_CURSOR_VERSION, json.dumps(document).encode(), secret=secret)


def decode_offset_cursor(token: str, *, secret: bytes) -> int:
    """The offset of an `l1` cursor; CursorError for anything else."""
    document = _json_document(unseal_token(token, LIST_CURSOR_VERSION, secret=secret))
    value = document.get("o")
    if not _is_count(value):
        raise CursorError(NOT_ISSUED_MESSAGE)
    return value


def decode_search_cursor(token: str, query: str, *, secret: bytes) -> int:
    """The offset of an `s1` cursor issued for `query`; CursorError for anything else."""
    document = _json_document(unseal_token(token, SEARCH_CURSOR_VERSION, secret=secret))
    offset = document.get("o")
    if set(document) != {"o", "q"} or not _is_count(offset):
        raise CursorError(NOT_ISSUED_MESSAGE)
    if document["q"] != query:
        raise CursorError(
            "cursor belongs to a different query, scope or time range; start again without a cursor"
        )
    return offset


def _json_document(payload: bytes) -> dict[str, Any]:
    try:
        document = json.loads(payload)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise CursorError(NOT_ISSUED_MESSAGE) from exc
    if not isinstance(document, dict):
        raise CursorError(NOT_ISSUED_MESSAGE)
    return document

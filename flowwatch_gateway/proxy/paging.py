"""The gateway's ListRuns cursor: per-instance paging state and the k-way merge step.

A gateway page is a merge of several instances' pages. To return every run exactly
once, in order, without re-reading from the top, the gateway cursor records for
each taking-part instance the instance's own cursor of the page it is in the middle
of and how many runs of that page were already handed out (`skip`). Each call
re-fetches that page once with a limit big enough to still hold `limit` unseen runs.
Instance cursors are opaque strings and are never parsed.

Everything here is pure; the gateway does the fetching.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import heapq
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from flowwatch_gateway.api.limits import MAX_PAGE_SIZE
from flowwatch_gateway.api.ordering import OrderField, RunSortKey, run_sort_key
from flowwatch_gateway.gen.flowwatch.v1 import run_service_pb2, types_pb2

CURSOR_VERSION = "g1"
MAX_CURSOR_CHARS = 65536

NOT_ISSUED_MESSAGE = "cursor is not one this gateway issued; start again without a cursor"
_CHECKSUM_BYTES = 9  # 12 base64url characters


class CursorError(ConnectError):
    """A client-supplied cursor the gateway cannot use; always invalid_argument."""

    def __init__(self, message: str) -> None:
        super().__init__(Code.INVALID_ARGUMENT, message)


@dataclass(frozen=True)
class InstanceCursor:
    """Where one instance stands: its page cursor, runs of that page already sent, its total."""

    upstream_cursor: str
    skip: int
    exhausted: bool
    total: int


@dataclass(frozen=True)
class ListRunsCursor:
    """Gateway paging state; `query` fingerprints the filter and order it belongs to."""

    query: str
    instances: dict[str, InstanceCursor]


@dataclass(frozen=True)
class PageFetch:
    """One upstream ListRuns call to make: cursor and limit to send, runs to skip in the answer."""

    upstream_cursor: str
    limit: int
    skip: int


@dataclass(frozen=True)
class InstancePage:
    """What an instance answered to a PageFetch."""

    runs: Sequence[types_pb2.Run]
    next_cursor: str
    total_count: int


@dataclass
class MergedPage:
    """One gateway page: (instance id, run) in order, the state to continue from, the total.

    `next_state` is None when every instance is exhausted. `failed` lists the
    instances whose runs are still owed (no answer this call); their state is kept.
    """

    runs: list[tuple[str, types_pb2.Run]]
    next_state: ListRunsCursor | None
    total_count: int
    failed: list[str] = dataclasses.field(default_factory=list)


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


def encode_cursor(cursor: ListRunsCursor, *, secret: bytes = b"") -> str:
    """`g1.<base64url compact JSON>.<checksum>` (see seal_token): url-safe, deterministic."""
    entries = [
        [instance_id, state.upstream_cursor, state.skip, int(state.exhausted), state.total]
        for instance_id, state in sorted(cursor.instances.items())
    ]
    payload = json.dumps(
        {"q": cursor.query, "i": entries}, separators=(",", ":"), ensure_ascii=True
    ).encode()
    return seal_token(CURSOR_VERSION, payload, secret=secret)


def decode_cursor(token: str, *, secret: bytes = b"") -> ListRunsCursor:
    """Parse a cursor from encode_cursor; anything else raises CursorError."""
    payload = unseal_token(token, CURSOR_VERSION, secret=secret)
    try:
        document = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CursorError(NOT_ISSUED_MESSAGE) from exc
    return _cursor_from_document(document)


def seal_token(version: str, payload: bytes, *, secret: bytes = b"") -> str:
    """`<version>.<base64url payload>.<checksum>`: the envelope of every gateway cursor.

    The checksum is an HMAC-SHA256 prefix over version and body; with the default
    empty secret it catches corruption and casual edits, with a secret it also
    stops forgery.
    """
    body = _b64encode(payload)
    return f"{version}.{body}.{_checksum(version, body, secret)}"


def unseal_token(token: str, version: str, *, secret: bytes = b"") -> bytes:
    """The payload of a token from seal_token with this version; CursorError otherwise."""
    if len(token) > MAX_CURSOR_CHARS:
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


def resume_cursor(token: str, query: str, *, secret: bytes = b"") -> ListRunsCursor | None:
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


def plan_fetches(
    state: ListRunsCursor | None, instance_ids: Sequence[str], limit: int
) -> dict[str, PageFetch]:
    """The one upstream page to fetch per instance for a gateway page of `limit` runs.

    First page (state None): every instance in instance_ids from the start. Later:
    every non-exhausted instance of the cursor that is still among instance_ids
    (an instance that is gone is left out and reported as failed by merge_page;
    instances that appeared later are not mixed in). The current page is fetched
    again with limit skip+limit (capped at the max) so that, after skipping what
    was already sent, up to `limit` unseen runs remain.
    """
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValueError(f"limit must be in 1..{MAX_PAGE_SIZE}; got {limit}")
    if state is None:
        return {instance_id: PageFetch("", limit, 0) for instance_id in instance_ids}
    available = set(instance_ids)
    return {
        instance_id: PageFetch(
            instance.upstream_cursor, min(MAX_PAGE_SIZE, instance.skip + limit), instance.skip
        )
        for instance_id, instance in sorted(state.instances.items())
        if not instance.exhausted and instance_id in available
    }


def merge_page(
    state: ListRunsCursor | None,
    fetches: Mapping[str, PageFetch],
    pages: Mapping[str, InstancePage],
    limit: int,
    field: OrderField,
    descending: bool,
    *,
    query: str | None = None,
) -> MergedPage:
    """K-way merge of the instances' pages into one gateway page and the state after it.

    Emits up to `limit` runs in (field, descending) order, ties broken by instance
    id. It stops early when an instance with further pages has no buffered run
    left, because that instance's next unseen run could sort before anything else.
    An instance missing from `pages` (or not fetched) failed this call: its state is
    kept so its runs come on a later page, neither lost nor repeated, and it is
    listed in `failed`. Runs of one instance are never reordered.

    `query` (the fingerprint) is required when `state` is None, i.e. on the first page.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1; got {limit}")
    if state is None:
        if query is None:
            raise ValueError("merge_page needs the query fingerprint for a first page")
        previous = {instance_id: InstanceCursor("", 0, False, 0) for instance_id in fetches}
    else:
        previous = dict(state.instances)
        query = state.query

    buffers: dict[str, Sequence[types_pb2.Run]] = {}
    has_more: dict[str, bool] = {}
    failed: list[str] = []
    for instance_id, instance in sorted(previous.items()):
        if instance.exhausted:
            continue
        page = pages.get(instance_id)
        if page is None or instance_id not in fetches:
            failed.append(instance_id)
            continue
        buffers[instance_id] = page.runs[instance.skip :]
        has_more[instance_id] = page.next_cursor != ""

    emitted, consumed = _k_way_merge(buffers, has_more, limit, field, descending)

    next_instances: dict[str, InstanceCursor] = {}
    for instance_id, instance in previous.items():
        if instance_id not in buffers:
            next_instances[instance_id] = instance
            continue
        page = pages[instance_id]
        if consumed[instance_id] < len(buffers[instance_id]):
            next_instances[instance_id] = InstanceCursor(
                instance.upstream_cursor,
                instance.skip + consumed[instance_id],
                False,
                page.total_count,
            )
        elif page.next_cursor:
            next_instances[instance_id] = InstanceCursor(
                page.next_cursor, 0, False, page.total_count
            )
        else:
            next_instances[instance_id] = InstanceCursor("", 0, True, page.total_count)

    total = sum(instance.total for instance in next_instances.values())
    done = all(instance.exhausted for instance in next_instances.values())
    next_state = None if done else ListRunsCursor(query, next_instances)
    return MergedPage(emitted, next_state, total, failed)


@dataclass(frozen=True)
class _HeapEntry:
    """Heap item ordering runs in the requested direction, ties by instance id."""

    key: RunSortKey
    descending: bool
    instance_id: str
    index: int

    def __lt__(self, other: _HeapEntry) -> bool:
        if self.key != other.key:
            return (self.key > other.key) if self.descending else (self.key < other.key)
        return self.instance_id < other.instance_id


def _k_way_merge(
    buffers: Mapping[str, Sequence[types_pb2.Run]],
    has_more: Mapping[str, bool],
    limit: int,
    field: OrderField,
    descending: bool,
) -> tuple[list[tuple[str, types_pb2.Run]], dict[str, int]]:
    """Emit up to `limit` runs; returns them and how many were taken from each buffer."""
    consumed = {instance_id: 0 for instance_id in buffers}
    emitted: list[tuple[str, types_pb2.Run]] = []
    # An instance that has nothing buffered but more pages blocks the whole merge.
    if any(not runs and has_more[instance_id] for instance_id, runs in buffers.items()):
        return emitted, consumed

    heap = [
        _HeapEntry(run_sort_key(runs[0], field), descending, instance_id, 0)
        for instance_id, runs in buffers.items()
        if runs
    ]
    heapq.heapify(heap)
    while heap and len(emitted) < limit:
        entry = heapq.heappop(heap)
        runs = buffers[entry.instance_id]
        emitted.append((entry.instance_id, runs[entry.index]))
        consumed[entry.instance_id] += 1
        following = entry.index + 1
        if following < len(runs):
            heapq.heappush(
                heap,
                _HeapEntry(
                    run_sort_key(runs[following], field), descending, entry.instance_id, following
                ),
            )
        elif has_more[entry.instance_id]:
            break
    return emitted, consumed


def _cursor_from_document(document: Any) -> ListRunsCursor:
    """Validate the decoded JSON strictly: a checksum match is not proof of shape."""
    if not isinstance(document, dict) or set(document) != {"q", "i"}:
        raise CursorError(NOT_ISSUED_MESSAGE)
    query, entries = document["q"], document["i"]
    if not isinstance(query, str) or not isinstance(entries, list):
        raise CursorError(NOT_ISSUED_MESSAGE)
    instances: dict[str, InstanceCursor] = {}
    for entry in entries:
        if not isinstance(entry, list) or len(entry) != 5:
            raise CursorError(NOT_ISSUED_MESSAGE)
        instance_id, upstream, skip, exhausted, total = entry
        if (
            not isinstance(instance_id, str)
            or not isinstance(upstream, str)
            or not _is_count(skip)
            or exhausted not in (0, 1)
            or isinstance(exhausted, bool)
            or not _is_count(total)
            or instance_id in instances
        ):
            raise CursorError(NOT_ISSUED_MESSAGE)
        instances[instance_id] = InstanceCursor(upstream, skip, bool(exhausted), total)
    return ListRunsCursor(query, instances)


def _is_count(value: object) -> bool:
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

"""Merging what the subsystems are: workflows, subsystems and capabilities.

Every function takes only the successful answers, keyed by subsystem id, and is
deterministic: subsystems are visited in sorted id order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

from flowwatch_gateway.api.limits import effective_page_size
from flowwatch_gateway.gen.flowwatch.v1 import types_pb2
from flowwatch_gateway.gen.flowwatch.v1 import (
    workflow_service_pb2 as wf,
)
from flowwatch_gateway.proxy.merge._protobuf import timestamp_of
from flowwatch_gateway.proxy.paging import decode_offset_cursor, offset_cursor

T = TypeVar("T")


META_INSTANCE = "gateway.instance"


META_STATE = "gateway.state"


META_LAST_HEARTBEAT = "gateway.last_heartbeat"


META_ENDPOINT = "gateway.endpoint"


META_STALE_SINCE = "gateway.stale_since"


META_ANSWERED = "gateway.answered"


META_REGISTRATION = "gateway.registration"
META_STATS_AS_OF = "gateway.stats_as_of"
# Appended to the name of a subsystem none of whose instances is connected: the stock
# UI labels a card from its failure count alone and would call it healthy.
UNREACHABLE_SUFFIX = " — unreachable"


STATE_UNKNOWN = "unknown"


def merge_workflows(
    responses: Mapping[str, wf.ListWorkflowsResponse],
) -> list[tuple[str, types_pb2.WorkflowDefinition]]:
    """Every instance's workflow definitions as (instance id, definition).

    The same workflow id served by several instances stays several entries (they
    are different deployments); ordered by (workflow id, instance id).
    """
    merged = [
        (instance_id, definition)
        for instance_id, response in responses.items()
        for definition in response.workflows
    ]
    merged.sort(key=lambda pair: (pair[1].id, pair[0]))
    return merged


def paginate_list(
    items: Sequence[T], cursor: str, limit: int, *, secret: bytes
) -> tuple[list[T], str, int]:
    """Offset paging of a small merged list: (page, next cursor or "", total).

    The cursor is opaque and versioned (`l1.<base64url offset>.<checksum>`), so a
    ListRuns cursor or a subsystem's own cursor is rejected with CursorError.
    `limit` follows the FlowWatch defaults (0 means 20, at most 100). An offset past
    the end (the list shrank) gives an empty last page rather than an error.
    """
    offset = decode_offset_cursor(cursor, secret=secret) if cursor else 0
    size = effective_page_size(limit)
    page = list(items[offset : offset + size])
    end = offset + len(page)
    next_cursor = ""
    if end < len(items):
        next_cursor = offset_cursor(end, secret=secret)
    return page, next_cursor, len(items)


@dataclass(frozen=True)
class InstanceView:
    """The gateway registry's view of one registered instance (not what it reports)."""

    instance_id: str
    name: str
    description: str
    endpoint: str
    state: str
    last_heartbeat: datetime | None
    stale_since: datetime | None = None
    registered_at: datetime | None = None
    workflow_count: int = 0
    metadata: Mapping[str, str] = field(default_factory=dict)
    registration_id: str = ""  # "id#epoch": tells a re-registration from the one before


def merge_subsystems(
    responses: Mapping[str, wf.ListSubsystemsResponse],
    instances: Sequence[InstanceView],
    remembered: Mapping[str, tuple[datetime, wf.ListSubsystemsResponse]] | None = None,
) -> wf.ListSubsystemsResponse:
    """One summary per logical subsystem id, with the gateway's view added as metadata.

    Summaries come from the instances' own answers, grouped by subsystem id. When
    several instances report the same id, workflow_count, active_runs and
    failed_last_hour add up, and error_rate_last_hour is the maximum: the answers
    carry no denominators, so an exact combined rate cannot be computed and the
    worst one is the safe thing to show. Name, description and other fields come
    from the first instance (by id); metadata is the union, first instance wins.

    Metadata added: `gateway.instance`, `gateway.registration` (id#epoch),
    `gateway.state` (the registration's state:
    connected or stale), `gateway.answered` (whether the instance answered this
    call), `gateway.last_heartbeat` (RFC 3339), `gateway.endpoint` - comma-separated
    and aligned when several instances stand behind one subsystem - and
    `gateway.stale_since` when known. A registered instance that did not answer (or
    whose answer did not mention it) is never hidden: it joins the entry with its
    own id, or gets an entry built from the registry. Sorted by subsystem id.

    `remembered` holds instances' last answers (time, answer): an instance that did
    not answer now is shown with its last known stats and `gateway.stats_as_of`
    rather than as an idle, healthy-looking subsystem; an entry none of whose
    instances is connected gets UNREACHABLE_SUFFIX on its name.
    """
    views = {view.instance_id: view for view in instances}
    as_of = {iid: moment for iid, (moment, _) in (remembered or {}).items() if iid not in responses}
    shown = dict(responses)
    for iid, (_, answer) in (remembered or {}).items():
        if iid in views:
            shown.setdefault(iid, answer)
    groups: dict[str, list[tuple[str, wf.SubsystemSummary]]] = {}
    for instance_id in sorted(shown):
        reported: set[str] = set()
        for summary in shown[instance_id].subsystems:
            subsystem_id = summary.subsystem.id
            if subsystem_id in reported:
                continue
            reported.add(subsystem_id)
            groups.setdefault(subsystem_id, []).append((instance_id, summary))

    covered = {instance_id for members in groups.values() for instance_id, _ in members}
    extra_members: dict[str, list[str]] = {}
    synthesized: dict[str, wf.SubsystemSummary] = {}
    for instance_id in sorted(views):
        if instance_id in covered:
            continue
        if instance_id in groups:
            extra_members.setdefault(instance_id, []).append(instance_id)
        else:
            synthesized[instance_id] = _summary_from_view(views[instance_id])

    merged = wf.ListSubsystemsResponse()
    for subsystem_id in sorted(set(groups) | set(synthesized)):
        if subsystem_id in groups:
            members = groups[subsystem_id]
            summary = _combine_summaries([summary for _, summary in members])
            member_ids = [instance_id for instance_id, _ in members]
            member_ids += extra_members.get(subsystem_id, [])
        else:
            summary = synthesized[subsystem_id]
            member_ids = [subsystem_id]
        _annotate(summary, member_ids, views, answered=set(responses), as_of=as_of)
        if not any(iid in views and views[iid].state == "connected" for iid in member_ids):
            summary.subsystem.name = (summary.subsystem.name or subsystem_id) + UNREACHABLE_SUFFIX
        merged.subsystems.append(summary)
    return merged


def _combine_summaries(summaries: Sequence[wf.SubsystemSummary]) -> wf.SubsystemSummary:
    combined = wf.SubsystemSummary()
    combined.CopyFrom(summaries[0])
    for other in summaries[1:]:
        combined.workflow_count += other.workflow_count
        combined.active_runs += other.active_runs
        combined.failed_last_hour += other.failed_last_hour
        combined.error_rate_last_hour = max(
            combined.error_rate_last_hour, other.error_rate_last_hour
        )
        for key, value in other.subsystem.metadata.items():
            combined.subsystem.metadata.setdefault(key, value)
        if other.subsystem.HasField("created_at") and (
            not combined.subsystem.HasField("created_at")
            or other.subsystem.created_at.ToNanoseconds()
            < combined.subsystem.created_at.ToNanoseconds()
        ):
            combined.subsystem.created_at.CopyFrom(other.subsystem.created_at)
    return combined


def _summary_from_view(view: InstanceView) -> wf.SubsystemSummary:
    summary = wf.SubsystemSummary(
        subsystem=types_pb2.Subsystem(
            id=view.instance_id,
            name=view.name,
            description=view.description,
            metadata=dict(view.metadata),
        ),
        workflow_count=view.workflow_count,
    )
    if view.registered_at is not None:
        summary.subsystem.created_at.CopyFrom(timestamp_of(view.registered_at))
    return summary


def _annotate(
    summary: wf.SubsystemSummary,
    member_ids: Sequence[str],
    views: Mapping[str, InstanceView],
    answered: set[str],
    as_of: Mapping[str, datetime],
) -> None:
    states, answers, heartbeats, endpoints, stale_since = [], [], [], [], []
    registrations = []
    for instance_id in member_ids:
        view = views.get(instance_id)
        registrations.append(view.registration_id if view else "")
        states.append(view.state if view else STATE_UNKNOWN)
        answers.append("true" if instance_id in answered else "false")
        heartbeats.append(_rfc3339(view.last_heartbeat) if view and view.last_heartbeat else "")
        endpoints.append(view.endpoint if view else "")
        stale_since.append(_rfc3339(view.stale_since) if view and view.stale_since else "")
    metadata = summary.subsystem.metadata
    metadata[META_INSTANCE] = ",".join(member_ids)
    metadata[META_STATE] = ",".join(states)
    metadata[META_ANSWERED] = ",".join(answers)
    metadata[META_REGISTRATION] = ",".join(registrations)
    metadata[META_LAST_HEARTBEAT] = ",".join(heartbeats)
    metadata[META_ENDPOINT] = ",".join(endpoints)
    if any(stale_since):
        metadata[META_STALE_SINCE] = ",".join(stale_since)
    stats_as_of = [_rfc3339(as_of[iid]) if iid in as_of else "" for iid in member_ids]
    if any(stats_as_of):
        metadata[META_STATS_AS_OF] = ",".join(stats_as_of)


def _rfc3339(moment: datetime) -> str:
    """UTC with a Z suffix; a naive datetime is taken to be UTC already."""
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    text = aware.astimezone(UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def merge_capabilities(caps: Sequence[types_pb2.Capabilities]) -> types_pb2.Capabilities:
    """What the UI may offer across all instances.

    Action flags (and streaming, analytics) are OR-ed: the gateway routes an
    action to the run's owner, so it is available if any instance supports it.
    Search: enabled if any is; engine = distinct engine names joined with ", ";
    scopes = sorted union; query_language, payload_indexed and log_indexed OR-ed;
    max_results and retention days the maximum.
    """
    merged = types_pb2.Capabilities()
    for flag in (
        "retry_run",
        "retry_from_step",
        "cancel_run",
        "pause_run",
        "resume_run",
        "skip_step",
        "streaming",
        "analytics",
    ):
        setattr(merged, flag, any(getattr(cap, flag) for cap in caps))
    searches = [cap.search for cap in caps if cap.HasField("search")]
    if not searches:
        return merged
    search = merged.search
    search.enabled = any(s.enabled for s in searches)
    search.engine = ", ".join(sorted({s.engine for s in searches if s.engine}))
    search.scopes.extend(sorted({scope for s in searches for scope in s.scopes}))
    search.query_language = any(s.query_language for s in searches)
    search.max_results = max(s.max_results for s in searches)
    search.payload_indexed = any(s.payload_indexed for s in searches)
    search.log_indexed = any(s.log_indexed for s in searches)
    search.log_retention_days = max(s.log_retention_days for s in searches)
    search.payload_retention_days = max(s.payload_retention_days for s in searches)
    return merged

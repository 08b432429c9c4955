"""`GET /status`: one server-rendered HTML page an operator can open.

No build step and no external assets: inline CSS, a meta refresh every 5 s, and
every value that came from a subsystem or the configuration escaped. It lists each
registered subsystem (state with its age, endpoint, last heartbeat, workflows,
capabilities, recent upstream errors) and the gateway itself (version, uptime,
configuration with secrets masked, readiness).

`UpstreamHealth` keeps what the page needs beyond the registry: the last few failed
upstream calls per subsystem, and since when a connected subsystem has not been
reachable (its heartbeats arrive, but its FlowWatch API does not answer, which is
what failing discovery looks like).
"""

from __future__ import annotations

import html
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from flowwatch_gateway.errors import TRANSPORT_CODES
from flowwatch_gateway.registry.base import Clock, Registry, SubsystemInstance
from flowwatch_gateway.urls import redact_url

__all__ = ["UpstreamError", "UpstreamHealth", "render_status_page"]

RECENT_ERRORS_KEPT = 5
ERROR_MESSAGE_MAX_CHARS = 200
REFRESH_SECONDS = 5


@dataclass(frozen=True)
class UpstreamError:
    at: datetime
    rpc: str
    code: str
    message: str


class UpstreamHealth:
    """Recent upstream failures per subsystem, bounded, forgotten with the subsystem.

    A registry listener, so memory follows registrations (1,000+ subsystems cost a
    few small deques). Failures of a subsystem the registry no longer knows are
    dropped: a call still in flight when it was removed must not bring it back.
    """

    def __init__(self, registry: Registry, clock: Clock, keep: int = RECENT_ERRORS_KEPT) -> None:
        self._registry = registry
        self._clock = clock
        self._keep = keep
        self._errors: dict[str, deque[UpstreamError]] = {}
        self._unreachable_since: dict[str, float] = {}
        registry.add_listener(self)

    def record(self, subsystem_id: str, rpc: str, error: Exception | None) -> None:
        """One finished upstream call to `subsystem_id`."""
        if self._registry.get(subsystem_id) is None:
            return
        if error is None:
            self._unreachable_since.pop(subsystem_id, None)
            return
        code = error.code if isinstance(error, ConnectError) else Code.UNKNOWN
        if code is Code.CANCELED:
            return  # cancelled by the gateway (first_success won elsewhere): not its fault
        message = error.message if isinstance(error, ConnectError) else type(error).__name__
        ring = self._errors.setdefault(subsystem_id, deque(maxlen=self._keep))
        ring.append(
            UpstreamError(
                self._clock.now(), rpc, code.name.lower(), message[:ERROR_MESSAGE_MAX_CHARS]
            )
        )
        if code in TRANSPORT_CODES:
            self._unreachable_since.setdefault(subsystem_id, self._clock.monotonic())
        else:
            self._unreachable_since.pop(subsystem_id, None)  # it answered, if with an error

    def recent(self, subsystem_id: str) -> list[UpstreamError]:
        """Its last failures, newest first."""
        return list(reversed(self._errors.get(subsystem_id, ())))

    def unreachable_for(self, subsystem_id: str) -> float | None:
        """Seconds since its API stopped answering, or None while it answers."""
        since = self._unreachable_since.get(subsystem_id)
        return None if since is None else self._clock.monotonic() - since

    def unreachable_count(self) -> int:
        return len(self._unreachable_since)

    # --- RegistryListener ------------------------------------------------------------
    def subsystem_registered(self, instance: SubsystemInstance) -> None:
        # A new registration (maybe a new endpoint) starts with a clean slate for
        # reachability; the error history stays, it is what the operator wants to see.
        self._unreachable_since.pop(instance.id, None)

    def subsystem_removed(self, instance: SubsystemInstance) -> None:
        self._errors.pop(instance.id, None)
        self._unreachable_since.pop(instance.id, None)


@dataclass(frozen=True)
class GatewayFacts:
    """What the page says about the gateway itself."""

    version: str
    uptime_s: float
    readiness: str
    configuration: Sequence[tuple[str, str]]


def format_age(seconds: float) -> str:
    """`42s`, `3m05s`, `2h10m`, `3d04h`: short and sortable by eye."""
    total = max(0, int(seconds))
    if total < 60:
        return f"{total}s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def _capabilities(instance: SubsystemInstance) -> str:
    caps = instance.capabilities
    if caps is None:
        return "unknown (not discovered yet)"
    names = [field.name for field, value in caps.ListFields() if isinstance(value, bool) and value]
    if caps.HasField("search"):
        names.append("search")
    return ", ".join(names) or "none"


def _state(instance: SubsystemInstance, health: UpstreamHealth, clock: Clock) -> tuple[str, str]:
    """(state, age): stale wins, then unreachable, else connected since it registered."""
    now_mono = clock.monotonic()
    if not instance.connected:
        since = instance.stale_since_monotonic
        return "stale", format_age(0 if since is None else now_mono - since)
    unreachable = health.unreachable_for(instance.id)
    if unreachable is not None:
        return "unreachable", format_age(unreachable)
    return "connected", format_age((clock.now() - instance.registered_at).total_seconds())


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5rem;color:#1d2330;background:#f6f7f9}
h1{font-size:1.4rem;margin:0 0 .25rem}h2{font-size:1.1rem;margin:1.5rem 0 .5rem}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{border:1px solid #d8dce3;padding:.35rem .5rem;text-align:left;vertical-align:top}
th{background:#eef0f4}code{font-size:12px}
.state{font-weight:600;white-space:nowrap;border-radius:3px;padding:.1rem .4rem}
.connected{background:#d8f3dc;color:#1b5e20}.stale{background:#ffe0b2;color:#8a4b00}
.unreachable{background:#ffcdd2;color:#8e0000}
.errors{margin:0;padding-left:1rem;font-size:12px;color:#8e0000}
.summary span{margin-right:1rem}.muted{color:#6b7280}
"""


def render_status_page(
    instances: Sequence[SubsystemInstance],
    health: UpstreamHealth,
    clock: Clock,
    gateway: GatewayFacts,
) -> str:
    """The whole page; every dynamic value goes through html.escape."""
    esc = html.escape
    now = clock.now()
    rows = []
    counts = {"connected": 0, "stale": 0, "unreachable": 0}
    for instance in instances:
        state, age = _state(instance, health, clock)
        counts[state] += 1
        heartbeat_ago = format_age((now - instance.last_heartbeat).total_seconds())
        errors = "".join(
            f"<li>{esc(error.at.strftime('%H:%M:%S'))} {esc(error.rpc)}: "
            f"{esc(error.code)} &mdash; {esc(error.message)}</li>"
            for error in health.recent(instance.id)
        )
        rows.append(
            f'<tr data-subsystem="{esc(instance.id)}" data-state="{state}">'
            f"<td><strong>{esc(instance.id)}</strong><br>"
            f'<span class="muted">{esc(instance.name)}</span></td>'
            f'<td><span class="state {state}">{state}</span> {esc(age)}</td>'
            f"<td><code>{esc(redact_url(instance.endpoint))}</code></td>"
            f"<td>{esc(instance.last_heartbeat.isoformat(timespec='seconds'))}"
            f'<br><span class="muted">{esc(heartbeat_ago)} ago</span></td>'
            f"<td>{len(instance.workflows)}</td>"
            f"<td>{esc(_capabilities(instance))}</td>"
            f"<td>{f'<ul class=errors>{errors}</ul>' if errors else '&ndash;'}</td>"
            "</tr>"
        )
    table = (
        "<table><thead><tr><th>Subsystem</th><th>State</th><th>Endpoint</th>"
        "<th>Last heartbeat</th><th>Workflows</th><th>Capabilities</th>"
        "<th>Recent upstream errors</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
        if rows
        else '<p class="muted">No subsystem is registered.</p>'
    )
    config_rows = "".join(
        f"<tr><th>{esc(name)}</th><td><code>{esc(value)}</code></td></tr>"
        for name, value in gateway.configuration
    )
    summary = "".join(f"<span>{name}: <strong>{n}</strong></span>" for name, n in counts.items())
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>FlowWatch Gateway status</title><style>{_CSS}</style></head><body>"
        "<h1>FlowWatch Gateway</h1>"
        f'<p class="muted">version {esc(gateway.version)} &middot; up '
        f"{esc(format_age(gateway.uptime_s))} &middot; "
        f'readiness <strong id="readiness">{esc(gateway.readiness)}</strong> &middot; '
        f"page rendered {esc(now.isoformat(timespec='seconds'))}, refreshes every "
        f"{REFRESH_SECONDS}s</p>"
        f'<h2>Subsystems ({len(instances)})</h2><p class="summary">{summary}</p>{table}'
        f"<h2>Configuration</h2><table>{config_rows}</table>"
        "</body></html>\n"
    )

"""Gateway configuration: environment variables, overridden by CLI flags, validated once.

The variable names are the ones the Go gateway used, so existing deployments keep
working. Every value is checked when the configuration is built: a bad value raises
ConfigError naming the variable (or flag) and the value, instead of silently falling
back to a default.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from flowwatch_gateway.allowed_hosts import AllowedHosts
from flowwatch_gateway.registry.endpoints import parse_host_rules
from flowwatch_gateway.registry.keys import load_keys_file
from flowwatch_gateway.urls import redact_url

ServerKind = Literal["pyvoy", "uvicorn"]
SERVER_KINDS: tuple[ServerKind, ...] = ("pyvoy", "uvicorn")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("text", "json")
ALL_INTERFACES = "0.0.0.0"
# Settings whose values are never logged or shown.
SECRET_FIELDS = ("api_key", "cursor_key")
# Settings that are URLs whose password is masked when shown.
URL_WITH_SECRET_FIELDS = ("redis_url",)
REDIS_SCHEMES = ("redis", "rediss", "unix")


class ConfigError(ValueError):
    """A configuration value is missing, malformed or out of range."""


# --- Go duration syntax ------------------------------------------------------------------

# Nanoseconds per unit; summing exact fractions keeps "30s" at exactly 30.0 seconds.
_DURATION_UNITS_NS: Mapping[str, int] = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # Go accepts both micro signs
    "μs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
}
_DURATION_TERM = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_go_duration(text: str) -> float:
    """Parse a Go `time.ParseDuration` string ("1m30s", "500ms", "1.5h", "0") into seconds.

    Go syntax is what operators of the Go gateway already wrote in their manifests.
    Raises ValueError on anything Go would reject (a bare number other than 0, unknown
    units, empty input).
    """
    body = text.strip()
    sign = 1.0
    if body[:1] in "+-" and body:
        sign = -1.0 if body[0] == "-" else 1.0
        body = body[1:]
    if body == "0":
        return 0.0
    if not body:
        raise ValueError(f"invalid duration {text!r}")
    total_ns = Fraction(0)
    position = 0
    while position < len(body):
        match = _DURATION_TERM.match(body, position)
        if match is None:
            raise ValueError(
                f"invalid duration {text!r}: expected a number followed by one of "
                "ns, us, ms, s, m, h (for example 1m30s or 500ms)"
            )
        total_ns += Fraction(match.group(1)) * _DURATION_UNITS_NS[match.group(2)]
        position = match.end()
    return sign * float(total_ns / 1_000_000_000)


def format_go_duration(seconds: float) -> str:
    """Render seconds so that parse_go_duration reads back the same value (to the ns)."""
    nanoseconds = round(seconds * 1e9)
    return "0" if nanoseconds == 0 else f"{nanoseconds}ns"


# --- the configuration -------------------------------------------------------------------


@dataclass(frozen=True)
class GatewayConfig:
    """Everything the gateway process needs to know, already validated."""

    host: str = ALL_INTERFACES
    port: int = 8091
    api_key: str = ""
    grace_period: float = 30.0
    heartbeat: float = 10.0
    run_cache_size: int = 100_000
    ui_origins: tuple[str, ...] = ("http://localhost:5173",)
    upstream_timeout: float = 5.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    server: ServerKind = "pyvoy"
    log_level: str = "info"
    api_keys_file: Path | None = None
    read_only: bool = False
    endpoint_allow: tuple[str, ...] = ()
    endpoint_deny: tuple[str, ...] = ()
    cursor_key: str = ""
    # Empty: the in-memory registry (one replica). Set: replicas share it on Redis.
    redis_url: str = ""
    fanout_concurrency: int = 64
    watch_poll_interval: float = 2.0
    self_preservation: float = 0.15
    exact_analytics_max_runs: int = 20_000
    # `host:port` of a separate listener for /metrics and /status; empty = the main port.
    metrics_addr: str = ""
    log_format: str = "text"
    trace_propagation: bool = False
    # Per-run calls to a known owner as bytes (serving/passthrough.py); false: decode all.
    passthrough: bool = True
    # The listener against slow and idle clients (serving/server.py applies them).
    request_header_timeout: float = 10.0
    idle_timeout: float = 120.0
    max_connections: int = 10_000
    # Access control (flowwatch_gateway/access/, docs/access.md). No policy file: the
    # open policy (everyone is admin); no audit file: audit records go to the log only.
    policy_file: Path | None = None
    audit_log: Path | None = None
    # Token verification: empty issuer = none. The audience is then required.
    oidc_issuer: str = ""
    oidc_audience: str = ""
    oidc_groups_claim: str = "groups"
    # Peers (normalised CIDRs) whose X-Forwarded-User/-Groups headers are believed.
    auth_proxy_trusted: tuple[str, ...] = ()
    # Host / :authority allow-list (lower-case host patterns, optional :port); empty = any.
    allowed_hosts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check(1 <= self.port <= 65535, "port", self.port, "must be between 1 and 65535")
        _check(self.heartbeat > 0, "heartbeat", self.heartbeat, "must be greater than 0")
        _check(self.grace_period >= 0, "grace_period", self.grace_period, "must not be negative")
        _check(
            self.upstream_timeout > 0,
            "upstream_timeout",
            self.upstream_timeout,
            "must be greater than 0",
        )
        _check(self.run_cache_size > 0, "run_cache_size", self.run_cache_size, "must be at least 1")
        _check(
            0 <= self.self_preservation < 1,
            "self_preservation",
            self.self_preservation,
            "must be a share from 0 (off) to below 1",
        )
        _check(
            0 < self.watch_poll_interval <= 60,
            "watch_poll_interval",
            self.watch_poll_interval,
            "must be greater than 0 and at most 1m",
        )
        _check(
            self.fanout_concurrency > 0,
            "fanout_concurrency",
            self.fanout_concurrency,
            "must be at least 1",
        )
        _check(
            self.exact_analytics_max_runs > 0,
            "exact_analytics_max_runs",
            self.exact_analytics_max_runs,
            "must be at least 1",
        )
        _check(
            self.request_header_timeout > 0,
            "request_header_timeout",
            self.request_header_timeout,
            "must be greater than 0",
        )
        _check(self.idle_timeout > 0, "idle_timeout", self.idle_timeout, "must be greater than 0")
        _check(
            self.max_connections > 0, "max_connections", self.max_connections, "must be at least 1"
        )
        _check(self.server in SERVER_KINDS, "server", self.server, "must be pyvoy or uvicorn")
        _check(
            self.log_level in LOG_LEVELS,
            "log_level",
            self.log_level,
            f"must be one of {', '.join(LOG_LEVELS)}",
        )
        _check(
            self.log_format in LOG_FORMATS,
            "log_format",
            self.log_format,
            f"must be one of {', '.join(LOG_FORMATS)}",
        )
        if self.metrics_addr:
            try:
                parse_addr(self.metrics_addr)
            except ValueError as exc:
                raise ConfigError(f"metrics_addr {exc}, got {self.metrics_addr!r}") from None
        if self.oidc_issuer and not self.oidc_audience:
            raise ConfigError(
                "GATEWAY_OIDC_AUDIENCE (--oidc-audience) must be set when GATEWAY_OIDC_ISSUER "
                f"is set ({self.oidc_issuer!r}): tokens are accepted only when their `aud` "
                "names this gateway, so a token issued for another application is refused"
            )
        if self.oidc_audience and not self.oidc_issuer:
            raise ConfigError(
                "GATEWAY_OIDC_AUDIENCE (--oidc-audience) is set but GATEWAY_OIDC_ISSUER is not: "
                "no token would be verified; set the issuer too, or unset the audience"
            )
        if not self.oidc_groups_claim:
            raise ConfigError(
                "GATEWAY_OIDC_GROUPS_CLAIM (--oidc-groups-claim) must not be empty "
                "(default: groups)"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError(
                "GATEWAY_TLS_CERT (--tls-cert) and GATEWAY_TLS_KEY (--tls-key) must be set "
                f"together (got cert={self.tls_cert}, key={self.tls_key})"
            )
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigError(
                "GATEWAY_TLS_CLIENT_CA (--tls-client-ca, mTLS) needs GATEWAY_TLS_CERT and "
                "GATEWAY_TLS_KEY as well"
            )

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert is not None

    @property
    def addr(self) -> str:
        """The listen address in the GATEWAY_ADDR form (`host:port`)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GatewayConfig:
        """Configuration from environment variables only (how the Envoy process gets it)."""
        return cls.from_sources(os.environ if env is None else env, {})

    @classmethod
    def from_sources(cls, env: Mapping[str, str], flags: Mapping[str, str | None]) -> GatewayConfig:
        """Build from env vars and CLI flag values; a flag given (not None) wins over its var.

        `flags` maps flag names (e.g. "--heartbeat") to their raw string values.
        """
        values: dict[str, Any] = {}
        for setting in SETTINGS:
            flag_value = flags.get(setting.flag)
            if flag_value is not None:
                source, raw = setting.flag, flag_value
            elif setting.env in env:
                source, raw = setting.env, env[setting.env]
            else:
                continue
            try:
                values.update(setting.parse(raw))
            except ValueError as exc:
                shown = redact_url(raw) if "redis_url" in setting.fields else raw
                raise ConfigError(f"{source}={shown!r}: {exc}") from None
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """Environment variables that rebuild exactly this configuration via from_env.

        The CLI validates flags and env in its own process; the app itself runs inside
        the Envoy process, which only inherits environment variables.
        """
        env = {
            "GATEWAY_ADDR": self.addr,
            "GATEWAY_API_KEY": self.api_key,
            "GATEWAY_GRACE_PERIOD": format_go_duration(self.grace_period),
            "GATEWAY_HEARTBEAT": format_go_duration(self.heartbeat),
            "GATEWAY_RUN_CACHE_SIZE": str(self.run_cache_size),
            "UI_ORIGIN": ",".join(self.ui_origins),
            "GATEWAY_UPSTREAM_TIMEOUT": format_go_duration(self.upstream_timeout),
            "GATEWAY_TLS_CERT": str(self.tls_cert or ""),
            "GATEWAY_TLS_KEY": str(self.tls_key or ""),
            "GATEWAY_TLS_CLIENT_CA": str(self.tls_client_ca or ""),
            "GATEWAY_SERVER": self.server,
            "GATEWAY_LOG_LEVEL": self.log_level,
            "GATEWAY_API_KEYS_FILE": str(self.api_keys_file or ""),
            "GATEWAY_READ_ONLY": "true" if self.read_only else "false",
            "GATEWAY_ENDPOINT_ALLOW": ",".join(self.endpoint_allow),
            "GATEWAY_ENDPOINT_DENY": ",".join(self.endpoint_deny),
            "GATEWAY_CURSOR_KEY": self.cursor_key,
            "GATEWAY_REDIS_URL": self.redis_url,
            "GATEWAY_FANOUT_CONCURRENCY": str(self.fanout_concurrency),
            "GATEWAY_WATCH_POLL_INTERVAL": format_go_duration(self.watch_poll_interval),
            "GATEWAY_SELF_PRESERVATION": repr(self.self_preservation),
            "GATEWAY_EXACT_ANALYTICS_MAX_RUNS": str(self.exact_analytics_max_runs),
            "GATEWAY_METRICS_ADDR": self.metrics_addr,
            "GATEWAY_LOG_FORMAT": self.log_format,
            "GATEWAY_TRACE_PROPAGATION": "true" if self.trace_propagation else "false",
            "GATEWAY_PASSTHROUGH": "true" if self.passthrough else "false",
            "GATEWAY_REQUEST_HEADER_TIMEOUT": format_go_duration(self.request_header_timeout),
            "GATEWAY_IDLE_TIMEOUT": format_go_duration(self.idle_timeout),
            "GATEWAY_MAX_CONNECTIONS": str(self.max_connections),
            "GATEWAY_POLICY_FILE": str(self.policy_file or ""),
            "GATEWAY_AUDIT_LOG": str(self.audit_log or ""),
            "GATEWAY_OIDC_ISSUER": self.oidc_issuer,
            "GATEWAY_OIDC_AUDIENCE": self.oidc_audience,
            "GATEWAY_OIDC_GROUPS_CLAIM": self.oidc_groups_claim,
            "GATEWAY_AUTH_PROXY_TRUSTED": ",".join(self.auth_proxy_trusted),
            "GATEWAY_ALLOWED_HOSTS": ",".join(self.allowed_hosts),
        }
        return env

    def describe(self) -> str:
        """One log line with the effective settings; secrets are never shown."""
        return " ".join(f"{name}={value}" for name, value in self.masked_items())

    def masked_items(self) -> list[tuple[str, str]]:
        """(setting, value shown to people) pairs; secrets read only `set` or `unset`."""
        items = []
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name in SECRET_FIELDS:
                value = "set" if value else "unset"
            elif field.name in URL_WITH_SECRET_FIELDS:
                value = redact_url(value) or "unset"
            elif isinstance(value, float):
                value = f"{value:g}s"
            items.append((field.name, str(value)))
        return items


def _check(ok: bool, name: str, value: object, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{name} {rule}, got {value!r}")


# --- one parser per setting --------------------------------------------------------------


def parse_addr(text: str) -> dict[str, Any]:
    """`host:port`, `:port` (all interfaces) or `[v6]:port` -> host and port."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep:
        raise ValueError("expected host:port (for example :8091 or 127.0.0.1:8091)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port_text.isdigit():
        raise ValueError(f"port must be a number between 1 and 65535, got {port_text!r}")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be between 1 and 65535, got {port}")
    return {"host": host or ALL_INTERFACES, "port": port}


def parse_origins(text: str) -> tuple[str, ...]:
    """A comma-separated list of browser origins (`scheme://host[:port]`) or `*`."""
    origins = tuple(part.strip() for part in text.split(",") if part.strip())
    if not origins:
        raise ValueError("expected at least one origin, e.g. http://localhost:5173")
    for origin in origins:
        if origin == "*":
            continue
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{origin!r} is not an origin like https://ui.example.com")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"{origin!r} must not contain a path, query or fragment")
    return tuple(origin.rstrip("/") for origin in origins)


def _duration_field(name: str, *, allow_zero: bool) -> Callable[[str], dict[str, Any]]:
    def parse(text: str) -> dict[str, Any]:
        seconds = parse_go_duration(text)
        if seconds < 0 or (seconds == 0 and not allow_zero):
            raise ValueError("must be greater than 0" if not allow_zero else "must not be negative")
        return {name: seconds}

    return parse


def _share_field(name: str) -> Callable[[str], dict[str, Any]]:
    def parse(text: str) -> dict[str, Any]:
        try:
            value = float(text)
        except ValueError:
            raise ValueError("expected a number such as 0.15") from None
        return {name: value}

    return parse


def _positive_int_field(name: str) -> Callable[[str], dict[str, Any]]:
    def parse(text: str) -> dict[str, Any]:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError("expected a whole number") from None
        if value < 1:
            raise ValueError("must be at least 1")
        return {name: value}

    return parse


def _optional_file_field(name: str) -> Callable[[str], dict[str, Any]]:
    def parse(text: str) -> dict[str, Any]:
        if not text.strip():
            return {name: None}
        path = Path(text.strip())
        if not path.is_file():
            raise ValueError(f"no readable file at {path}")
        return {name: path}

    return parse


def _choice_field(name: str, choices: tuple[str, ...]) -> Callable[[str], dict[str, Any]]:
    def parse(text: str) -> dict[str, Any]:
        value = text.strip().lower()
        if value == "warn":
            value = "warning"
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return {name: value}

    return parse


def _keys_file_field(text: str) -> dict[str, Any]:
    """A per-subsystem keys file, parsed now so a bad line fails start-up, not a register."""
    if not text.strip():
        return {"api_keys_file": None}
    path = Path(text.strip())
    load_keys_file(path)
    return {"api_keys_file": path}


def _bool_field(name: str) -> Callable[[str], dict[str, Any]]:
    def parse(text: str) -> dict[str, Any]:
        value = text.strip().lower()
        if value in ("1", "true", "yes", "on"):
            return {name: True}
        if value in ("", "0", "false", "no", "off"):
            return {name: False}
        raise ValueError("expected true or false")

    return parse


def _host_rules_field(name: str) -> Callable[[str], dict[str, Any]]:
    def parse(text: str) -> dict[str, Any]:
        return {name: tuple(rule.text for rule in parse_host_rules(text))}

    return parse


def _metrics_addr_field(text: str) -> dict[str, Any]:
    """Empty (serve on the main port) or a listen address, kept in GATEWAY_ADDR form."""
    if not text.strip():
        return {"metrics_addr": ""}
    parsed = parse_addr(text)
    host = parsed["host"]
    host = f"[{host}]" if ":" in host else host
    return {"metrics_addr": f"{host}:{parsed['port']}"}


def parse_redis_url(text: str) -> dict[str, Any]:
    """Empty (in-memory registry) or redis://[:password@]host[:port][/db], rediss://, unix://."""
    url = text.strip()
    if not url:
        return {"redis_url": ""}
    parts = urlsplit(url)
    if parts.scheme not in REDIS_SCHEMES:
        raise ValueError(
            f"{redact_url(url)!r} is not a Redis URL: use redis://host:6379/0, "
            "rediss://host:6380/0 (TLS) or unix:///path/to/redis.sock"
        )
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError(f"{redact_url(url)!r} has no host (e.g. redis://redis:6379/0)")
    try:
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise ValueError(f"{redact_url(url)!r} has an invalid port") from None
    db = parts.path.strip("/")
    if parts.scheme != "unix" and db and not db.isdigit():
        raise ValueError(f"{redact_url(url)!r}: the path must be a database number like /0")
    return {"redis_url": url}


def _audit_log_field(text: str) -> dict[str, Any]:
    """Empty (audit records go to the log only) or a file the gateway can append to."""
    if not text.strip():
        return {"audit_log": None}
    path = Path(text.strip())
    if path.is_dir():
        raise ValueError(f"{path} is a directory; name a file in it, e.g. {path / 'audit.log'}")
    if not path.parent.is_dir():
        raise ValueError(f"the directory {path.parent} does not exist; create it first")
    writable = os.access(path, os.W_OK) if path.exists() else os.access(path.parent, os.W_OK)
    if not writable:
        raise ValueError(f"{path} cannot be written by this user")
    return {"audit_log": path}


def parse_oidc_issuer(text: str) -> dict[str, Any]:
    """Empty (no token verification) or the issuer URL exactly as tokens carry it in `iss`."""
    issuer = text.strip()
    if not issuer:
        return {"oidc_issuer": ""}
    parts = urlsplit(issuer)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            "expected the issuer's URL, e.g. https://login.example.com/realms/ops "
            "(the `iss` of its tokens)"
        )
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("the issuer URL must not contain credentials, a query or a fragment")
    try:
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise ValueError("the issuer URL has an invalid port") from None
    # Not normalised (no trailing slash added or removed): `iss` is compared as text.
    return {"oidc_issuer": issuer}


_TOKEN_TEXT = re.compile(r"[^\s\x00-\x1f\x7f]+")


def _token_text_field(name: str, example: str) -> Callable[[str], dict[str, Any]]:
    """A claim value or name: no spaces or control characters (empty = unset)."""

    def parse(text: str) -> dict[str, Any]:
        value = text.strip()
        if value and not _TOKEN_TEXT.fullmatch(value):
            raise ValueError(f"must not contain spaces or control characters, e.g. {example}")
        return {name: value}

    return parse


def parse_trusted_proxies(text: str) -> dict[str, Any]:
    """Comma-separated IP addresses and CIDRs, kept as normalised networks."""
    networks = []
    for part in (item.strip() for item in text.split(",")):
        if not part:
            continue
        try:
            network = ipaddress.ip_network(part, strict=True)
        except ValueError:
            try:
                loose = ipaddress.ip_network(part, strict=False)
            except ValueError:
                raise ValueError(
                    f"{part!r} is not an IP address or CIDR (e.g. 10.0.0.5, 10.0.0.0/24, "
                    "fd00::/8); host names are not accepted: the peer address is compared"
                ) from None
            raise ValueError(f"{part!r} has host bits set; write {loose}") from None
        networks.append(str(network))
    return {"auth_proxy_trusted": tuple(networks)}


def parse_allowed_hosts(text: str) -> dict[str, Any]:
    """Comma-separated host names or patterns accepted in Host / :authority (empty = any)."""
    return {"allowed_hosts": AllowedHosts.parse(text).patterns}


@dataclass(frozen=True)
class Setting:
    """One configurable value: its env var, its CLI flag, and how to parse it."""

    env: str
    flag: str
    default: str
    help: str
    parse: Callable[[str], dict[str, Any]]
    fields: tuple[str, ...]


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "GATEWAY_ADDR",
        "--addr",
        ":8091",
        "listen address host:port; an empty host means all interfaces",
        parse_addr,
        ("host", "port"),
    ),
    Setting(
        "GATEWAY_API_KEY",
        "--api-key",
        "",
        "key subsystems must present when registering; empty disables the check",
        lambda text: {"api_key": text},
        ("api_key",),
    ),
    Setting(
        "GATEWAY_GRACE_PERIOD",
        "--grace-period",
        "30s",
        "how long a stale subsystem is kept before it is removed (Go duration)",
        _duration_field("grace_period", allow_zero=True),
        ("grace_period",),
    ),
    Setting(
        "GATEWAY_HEARTBEAT",
        "--heartbeat",
        "10s",
        "ping interval on Register streams; 2 missed pongs make a subsystem stale",
        _duration_field("heartbeat", allow_zero=False),
        ("heartbeat",),
    ),
    Setting(
        "GATEWAY_RUN_CACHE_SIZE",
        "--run-cache-size",
        "100000",
        "how many run-id -> subsystem routes to remember",
        _positive_int_field("run_cache_size"),
        ("run_cache_size",),
    ),
    Setting(
        "UI_ORIGIN",
        "--ui-origin",
        "http://localhost:5173",
        "browser origin(s) allowed by CORS, comma-separated",
        lambda text: {"ui_origins": parse_origins(text)},
        ("ui_origins",),
    ),
    Setting(
        "GATEWAY_UPSTREAM_TIMEOUT",
        "--upstream-timeout",
        "5s",
        "deadline for each proxied call to a subsystem (Go duration)",
        _duration_field("upstream_timeout", allow_zero=False),
        ("upstream_timeout",),
    ),
    Setting(
        "GATEWAY_TLS_CERT",
        "--tls-cert",
        "",
        "PEM certificate chain; enables TLS (ALPN h2) together with the key",
        _optional_file_field("tls_cert"),
        ("tls_cert",),
    ),
    Setting(
        "GATEWAY_TLS_KEY",
        "--tls-key",
        "",
        "PEM private key for --tls-cert",
        _optional_file_field("tls_key"),
        ("tls_key",),
    ),
    Setting(
        "GATEWAY_TLS_CLIENT_CA",
        "--tls-client-ca",
        "",
        "PEM CA bundle; when set, clients must present a certificate it signed (mTLS)",
        _optional_file_field("tls_client_ca"),
        ("tls_client_ca",),
    ),
    Setting(
        "GATEWAY_SERVER",
        "--server",
        "pyvoy",
        "pyvoy (HTTP/1.1 + HTTP/2 + gRPC) or uvicorn (HTTP/1.1 only, no Register)",
        _choice_field("server", SERVER_KINDS),
        ("server",),
    ),
    Setting(
        "GATEWAY_LOG_LEVEL",
        "--log-level",
        "info",
        "debug, info, warning, error or critical",
        _choice_field("log_level", LOG_LEVELS),
        ("log_level",),
    ),
    Setting(
        "GATEWAY_API_KEYS_FILE",
        "--api-keys-file",
        "",
        "file of `<subsystem id or fnmatch pattern> <key>` lines: per-subsystem keys",
        _keys_file_field,
        ("api_keys_file",),
    ),
    Setting(
        "GATEWAY_READ_ONLY",
        "--read-only",
        "false",
        "true: every action rpc (retry, cancel, pause, resume, skip, bulk, reindex) is "
        "refused with permission_denied",
        _bool_field("read_only"),
        ("read_only",),
    ),
    Setting(
        "GATEWAY_ENDPOINT_ALLOW",
        "--endpoint-allow",
        "",
        "comma-separated hosts and CIDRs; when set, only matching subsystem endpoints are accepted",
        _host_rules_field("endpoint_allow"),
        ("endpoint_allow",),
    ),
    Setting(
        "GATEWAY_ENDPOINT_DENY",
        "--endpoint-deny",
        "",
        "comma-separated hosts and CIDRs refused as subsystem endpoints, on top of the "
        "built-in rules",
        _host_rules_field("endpoint_deny"),
        ("endpoint_deny",),
    ),
    Setting(
        "GATEWAY_CURSOR_KEY",
        "--cursor-key",
        "",
        "secret that signs paging cursors; give every replica the same one (default: "
        "random per process, so cursors do not survive a restart)",
        lambda text: {"cursor_key": text},
        ("cursor_key",),
    ),
    Setting(
        "GATEWAY_REDIS_URL",
        "--redis-url",
        "",
        "redis://[:password@]host:port/db (or rediss://): replicas share their registry "
        "there; empty: in-memory registry, one replica",
        parse_redis_url,
        ("redis_url",),
    ),
    Setting(
        "GATEWAY_SELF_PRESERVATION",
        "--self-preservation",
        "0.15",
        "share of subsystems going stale at once (at least 3) above which none is removed, "
        "since the gateway's own network is the likelier fault; 0 turns it off",
        _share_field("self_preservation"),
        ("self_preservation",),
    ),
    Setting(
        "GATEWAY_WATCH_POLL_INTERVAL",
        "--watch-poll-interval",
        "2s",
        "how often WatchRuns polls subsystems that have no StreamService (Go duration)",
        _duration_field("watch_poll_interval", allow_zero=False),
        ("watch_poll_interval",),
    ),
    Setting(
        "GATEWAY_FANOUT_CONCURRENCY",
        "--fanout-concurrency",
        "64",
        "most subsystems one gateway call asks at the same time",
        _positive_int_field("fanout_concurrency"),
        ("fanout_concurrency",),
    ),
    Setting(
        "GATEWAY_EXACT_ANALYTICS_MAX_RUNS",
        "--exact-analytics-max-runs",
        "20000",
        "most finished runs the gateway lists (ListRuns) to compute merged latency "
        "percentiles exactly for subsystems that send no sketches; above it, approximate",
        _positive_int_field("exact_analytics_max_runs"),
        ("exact_analytics_max_runs",),
    ),
    Setting(
        "GATEWAY_METRICS_ADDR",
        "--metrics-addr",
        "",
        "host:port of a separate listener for /metrics and /status (then /metrics is not "
        "served on the main port); empty: both on the main port",
        _metrics_addr_field,
        ("metrics_addr",),
    ),
    Setting(
        "GATEWAY_LOG_FORMAT",
        "--log-format",
        "text",
        "text (one line per event) or json (one JSON object per line)",
        _choice_field("log_format", LOG_FORMATS),
        ("log_format",),
    ),
    Setting(
        "GATEWAY_TRACE_PROPAGATION",
        "--trace-propagation",
        "false",
        "true: pass the caller's W3C traceparent/tracestate on to the upstream calls it causes",
        _bool_field("trace_propagation"),
        ("trace_propagation",),
    ),
    Setting(
        "GATEWAY_PASSTHROUGH",
        "--passthrough",
        "true",
        "true: per-run calls whose owner is known are forwarded as bytes; false: every "
        "call is decoded and encoded again (the same answers, more work)",
        _bool_field("passthrough"),
        ("passthrough",),
    ),
    Setting(
        "GATEWAY_REQUEST_HEADER_TIMEOUT",
        "--request-header-timeout",
        "10s",
        "longest a client may take to send a request's headers once it has begun; then "
        "its connection is closed (pyvoy only; Go duration)",
        _duration_field("request_header_timeout", allow_zero=False),
        ("request_header_timeout",),
    ),
    Setting(
        "GATEWAY_IDLE_TIMEOUT",
        "--idle-timeout",
        "2m",
        "a client connection with no request in progress is closed after this long; open "
        "streams such as Register are never cut by it (Go duration)",
        _duration_field("idle_timeout", allow_zero=False),
        ("idle_timeout",),
    ),
    Setting(
        "GATEWAY_MAX_CONNECTIONS",
        "--max-connections",
        "10000",
        "most client connections open at once; further ones are refused (every subsystem "
        "holds one for its Register stream)",
        _positive_int_field("max_connections"),
        ("max_connections",),
    ),
    Setting(
        "GATEWAY_POLICY_FILE",
        "--policy-file",
        "",
        "YAML file of role bindings (viewer, operator, admin per subject and subsystem; "
        "docs/access.md), reloaded when it changes; empty: everyone may do everything",
        _optional_file_field("policy_file"),
        ("policy_file",),
    ),
    Setting(
        "GATEWAY_AUDIT_LOG",
        "--audit-log",
        "",
        "file every action is appended to as one JSON line (reopened after logrotate moves "
        "it); empty: audit records go to the log only",
        _audit_log_field,
        ("audit_log",),
    ),
    Setting(
        "GATEWAY_OIDC_ISSUER",
        "--oidc-issuer",
        "",
        "https (or http) URL of the OpenID Connect issuer whose bearer tokens identify "
        "callers; empty: no token verification",
        parse_oidc_issuer,
        ("oidc_issuer",),
    ),
    Setting(
        "GATEWAY_OIDC_AUDIENCE",
        "--oidc-audience",
        "",
        "the `aud` a token must carry to be accepted; required with --oidc-issuer",
        _token_text_field("oidc_audience", "flowwatch-gateway"),
        ("oidc_audience",),
    ),
    Setting(
        "GATEWAY_OIDC_GROUPS_CLAIM",
        "--oidc-groups-claim",
        "groups",
        "the token claim that lists the caller's groups (policy subjects group:NAME)",
        _token_text_field("oidc_groups_claim", "groups"),
        ("oidc_groups_claim",),
    ),
    Setting(
        "GATEWAY_AUTH_PROXY_TRUSTED",
        "--auth-proxy-trusted",
        "",
        "comma-separated IP addresses and CIDRs of authenticating proxies whose "
        "X-Forwarded-User / X-Forwarded-Groups headers are believed; empty: none",
        parse_trusted_proxies,
        ("auth_proxy_trusted",),
    ),
    Setting(
        "GATEWAY_ALLOWED_HOSTS",
        "--allowed-hosts",
        "",
        "comma-separated host names or patterns (*.example.com, host:port) a request's "
        "Host / :authority must match; empty: any",
        parse_allowed_hosts,
        ("allowed_hosts",),
    ),
)

"""Which subsystem endpoints the gateway may dial: the rules against blind SSRF.

A subsystem tells the gateway where to call it, and the gateway then calls that URL
(discovery, probes, every proxied rpc), reporting whether it answered. Without rules
anyone who may register could make the gateway probe cloud metadata services or
scan internal ports. `EndpointPolicy.check` is pure: given a host and the addresses
it resolved to, it names the rule that refuses it, or returns None. Names are
resolved and checked when a subsystem registers and again before each call
(`EndpointChecker`), because a name may resolve differently later (DNS rebinding).

Order of the rules: GATEWAY_ENDPOINT_DENY entries, the gateway's own listen
address, the built-in ranges (link-local, metadata, unspecified, multicast,
broadcast), then GATEWAY_ENDPOINT_ALLOW when it is set (only matching endpoints
pass). An ALLOW network lying wholly inside a built-in range lets that part of the
range through (e.g. `169.254.10.0/24` for subsystems that really live there); a
broader one such as `0.0.0.0/0` does not switch the built-in rules off.
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import math
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from flowwatch_gateway.urls import redact_url

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

RESOLVE_TIMEOUT_S = 3.0
# A verdict about an endpoint is reused this long by EndpointChecker: proxied calls
# then cost no DNS lookup each, while a rebinding name is caught within a second.
CHECK_CACHE_TTL_S = 1.0

# (rule name, network): refused unless an ALLOW network inside it says otherwise.
BUILT_IN_RANGES: tuple[tuple[str, IPNetwork], ...] = (
    ("link-local (cloud metadata lives here)", ipaddress.ip_network("169.254.0.0/16")),
    ("link-local", ipaddress.ip_network("fe80::/10")),
    ("cloud metadata address", ipaddress.ip_network("fd00:ec2::254/128")),
    ("cloud metadata address", ipaddress.ip_network("100.100.100.200/32")),
    ("unspecified address", ipaddress.ip_network("0.0.0.0/8")),
    ("unspecified address", ipaddress.ip_network("::/128")),
    ("multicast", ipaddress.ip_network("224.0.0.0/4")),
    ("multicast", ipaddress.ip_network("ff00::/8")),
    ("broadcast", ipaddress.ip_network("255.255.255.255/32")),
)
METADATA_HOSTS = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "metadata.azure.internal",
        "instance-data",
        "instance-data.ec2.internal",
    }
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def embedded_ipv4(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 one carries (mapped, compatible, NAT64, 6to4), else itself.

    `::ffff:169.254.169.254` reaches the same host as `169.254.169.254`.
    """
    if isinstance(address, ipaddress.IPv4Address):
        return address
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def _parse_address(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return None


@dataclass(frozen=True)
class HostRule:
    """One GATEWAY_ENDPOINT_ALLOW/DENY entry: a CIDR, an address, or a host name pattern."""

    text: str
    network: IPNetwork | None = None
    name_pattern: str | None = None

    @classmethod
    def parse(cls, text: str) -> HostRule:
        entry = text.strip().lower().rstrip(".")
        if not entry:
            raise ValueError("empty entry")
        try:
            return cls(entry, network=ipaddress.ip_network(entry.strip("[]"), strict=False))
        except ValueError:
            pass
        if any(c in entry for c in "/:@ ") or not all(c.isalnum() or c in ".-_*?[]" for c in entry):
            raise ValueError(
                f"{text!r} is neither a CIDR (10.0.0.0/8), an address nor a host name "
                "(orders.internal, *.svc.cluster.local)"
            )
        return cls(entry, name_pattern=entry)

    def matches_name(self, host: str) -> bool:
        return self.name_pattern is not None and fnmatch.fnmatchcase(host, self.name_pattern)

    def matches_address(self, address: IPAddress) -> bool:
        if self.network is None:
            return False
        return any(
            candidate.version == self.network.version and candidate in self.network
            for candidate in {address, embedded_ipv4(address)}
        )


def parse_host_rules(text: str) -> tuple[HostRule, ...]:
    """A comma-separated list of hosts and CIDRs; raises ValueError naming a bad entry."""
    return tuple(HostRule.parse(part) for part in text.split(",") if part.strip())


@dataclass(frozen=True)
class EndpointPolicy:
    """The rules for registered endpoints; see the module docstring for their order."""

    allow: tuple[HostRule, ...] = ()
    deny: tuple[HostRule, ...] = ()
    # The gateway's own listen port and the addresses it is reachable at on it.
    own_port: int | None = None
    own_addresses: frozenset[IPAddress] = field(default_factory=frozenset)
    own_any_address: bool = False  # listening on all interfaces: loopback counts as own

    @classmethod
    def for_listener(
        cls,
        host: str,
        port: int,
        *,
        allow: Sequence[HostRule] = (),
        deny: Sequence[HostRule] = (),
    ) -> EndpointPolicy:
        """The policy of a gateway listening on host:port (0.0.0.0 / :: = everywhere)."""
        listen = _parse_address(host)
        own: set[IPAddress] = set()
        any_address = listen is None or listen.is_unspecified
        if listen is not None and not listen.is_unspecified:
            own.add(listen)
        if any_address:
            own.update(_local_addresses())
        return cls(tuple(allow), tuple(deny), port, frozenset(own), any_address)

    def check(
        self, host: str, resolved_addresses: Iterable[IPAddress], port: int | None = None
    ) -> str | None:
        """The reason this endpoint is refused, naming the rule; None when it may be dialed.

        `host` is the URL's host (a name or an address literal); `resolved_addresses`
        are what the name resolved to (ignored for a literal).
        """
        name = host.strip("[]").lower().rstrip(".")
        literal = _parse_address(name)
        addresses = [literal] if literal is not None else list(resolved_addresses)
        if literal is None and name in METADATA_HOSTS:
            return f"{name} is a cloud metadata host name (built-in rule)"
        for rule in self.deny:
            if literal is None and rule.matches_name(name):
                return f"{name} matches GATEWAY_ENDPOINT_DENY entry {rule.text}"
            for address in addresses:
                if rule.matches_address(address):
                    return f"{address} matches GATEWAY_ENDPOINT_DENY entry {rule.text}"
        for address in addresses:
            problem = self._own_address_problem(address, port)
            if problem:
                return problem
        for address in addresses:
            problem = self._built_in_problem(address)
            if problem:
                return problem
        if self.allow and not self._allowed(name, literal is not None, addresses):
            listed = ", ".join(rule.text for rule in self.allow)
            return f"{name} is not in GATEWAY_ENDPOINT_ALLOW ({listed})"
        return None

    def _own_address_problem(self, address: IPAddress, port: int | None) -> str | None:
        if self.own_port is None or port != self.own_port:
            return None
        plain = embedded_ipv4(address)
        own = plain in self.own_addresses or address in self.own_addresses
        if self.own_any_address and plain.is_loopback:
            own = True
        if own:
            return f"{address}:{port} is the gateway's own listen address (built-in rule)"
        return None

    def _built_in_problem(self, address: IPAddress) -> str | None:
        plain = embedded_ipv4(address)
        for rule_name, network in BUILT_IN_RANGES:
            if plain.version != network.version or plain not in network:
                continue
            exempt = any(
                allowed.network is not None
                and allowed.network.version == network.version
                and allowed.network.subnet_of(network)  # type: ignore[arg-type]
                and allowed.matches_address(plain)
                for allowed in self.allow
            )
            if not exempt:
                shown = address if plain == address else f"{address} ({plain})"
                return (
                    f"{shown} is {rule_name}, in {network} (built-in rule; list a network "
                    "inside it in GATEWAY_ENDPOINT_ALLOW to permit it)"
                )
        return None

    def _allowed(self, name: str, is_literal: bool, addresses: list[IPAddress]) -> bool:
        if not is_literal and any(rule.matches_name(name) for rule in self.allow):
            return True
        # Every address must be allowed: the HTTP client may pick any of them.
        return bool(addresses) and all(
            any(rule.matches_address(address) for rule in self.allow) for address in addresses
        )


def _local_addresses() -> set[IPAddress]:
    """This machine's addresses as far as the resolver knows them (best effort)."""
    found: set[IPAddress] = set()
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None)
    except OSError:
        return found
    for info in infos:
        address = _parse_address(str(info[4][0]))
        if address is not None:
            found.add(address)
    return found


def is_ip_literal(host: str) -> bool:
    """Whether a URL's host is an address (then no resolver is ever asked about it)."""
    return _parse_address(host.strip("[]")) is not None


def endpoint_host_port(endpoint: str) -> tuple[str, int]:
    """Host and port of an http(s) URL (the scheme's default port when none is given)."""
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    return host, port


async def resolve(host: str, port: int) -> list[IPAddress]:
    """The addresses `host` resolves to now; [] when it does not resolve (yet)."""
    literal = _parse_address(host.strip("[]"))
    if literal is not None:
        return [literal]
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT_S):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError, UnicodeError):
        return []
    addresses = []
    for info in infos:
        address = _parse_address(str(info[4][0]))
        if address is not None and address not in addresses:
            addresses.append(address)
    return addresses


async def endpoint_refusal(policy: EndpointPolicy, endpoint: str) -> str | None:
    """Resolve the endpoint's host and check it; the refusing rule, or None."""
    return (await _checked(policy, endpoint))[0]


async def _checked(policy: EndpointPolicy, endpoint: str) -> tuple[str | None, str | None]:
    """(refusing rule or None, `address:port` to dial or None when it does not resolve)."""
    host, port = endpoint_host_port(endpoint)
    return _verdict(policy, host, port, await resolve(host, port))


def _verdict(
    policy: EndpointPolicy, host: str, port: int, addresses: list[IPAddress]
) -> tuple[str | None, str | None]:
    dial = dial_text(addresses[0], port) if addresses else None
    return policy.check(host, addresses, port), dial


def dial_text(address: IPAddress, port: int) -> str:
    """`address:port`, an IPv6 address in brackets."""
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


class EndpointChecker:
    """The call-time check: raise permission_denied before dialing a refused endpoint.

    The proxy calls `await checker.dial_address(endpoint)` before each upstream call
    (a leg through Envoy connects to the address it returns); verdicts are cached for
    CHECK_CACHE_TTL_S, an IP host's for good. `dial_address_now` answers without a
    lookup when it can.
    """

    def __init__(self, policy: EndpointPolicy, *, cache_ttl: float = CHECK_CACHE_TTL_S) -> None:
        self.policy = policy
        self._ttl = cache_ttl
        # endpoint -> (expires at, refusal, dial): an IP host's verdict never expires,
        # since the policy is fixed and no DNS answer can change it.
        self._verdicts: dict[str, tuple[float, str | None, str | None]] = {}

    async def dial_address(self, endpoint: str) -> str | None:
        """`address:port` the endpoint resolved to and was allowed at (None: no address).

        Raises permission_denied when a rule refuses it. Every resolved address was
        checked, so connecting to the one returned leaves no window for DNS rebinding.
        """
        known = self._fresh(endpoint) or self._literal_verdict(endpoint)
        refusal, dial = known or self._remember(endpoint, await _checked(self.policy, endpoint))
        if refusal is not None:
            shown = redact_url(endpoint)
            raise ConnectError(Code.PERMISSION_DENIED, f"endpoint {shown} is refused: {refusal}")
        return dial

    def dial_address_now(self, endpoint: str) -> str | None:
        """`dial_address` when it needs no DNS lookup: a fresh verdict, or an IP host.

        None when the answer would need a lookup, or the endpoint is refused or has no
        address; the caller then asks `dial_address`.
        """
        known = self._fresh(endpoint) or self._literal_verdict(endpoint)
        if known is None or known[0] is not None:
            return None
        return known[1]

    def _literal_verdict(self, endpoint: str) -> tuple[str | None, str | None] | None:
        host, port = endpoint_host_port(endpoint)
        literal = _parse_address(host.strip("[]"))
        if literal is None:
            return None
        verdict = _verdict(self.policy, host, port, [literal])
        return self._remember(endpoint, verdict, lasting=True)

    def _fresh(self, endpoint: str) -> tuple[str | None, str | None] | None:
        cached = self._verdicts.get(endpoint)
        if cached is None or time.monotonic() >= cached[0]:
            return None
        return cached[1], cached[2]

    def _remember(
        self, endpoint: str, verdict: tuple[str | None, str | None], *, lasting: bool = False
    ) -> tuple[str | None, str | None]:
        if len(self._verdicts) > 10_000:
            self._verdicts.clear()  # bounded; entries are cheap to recompute
        expires = math.inf if lasting else time.monotonic() + self._ttl
        self._verdicts[endpoint] = (expires, *verdict)
        return verdict

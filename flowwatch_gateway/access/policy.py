"""Who may do what on which subsystem: the policy file (GATEWAY_POLICY_FILE).

A policy is a list of bindings, each giving one role to some subjects on some
subsystems, plus the role of callers without an identity:

    bindings:
      - role: operator
        subjects: ["group:sre", "user:alice"]
        subsystems: ["orders*"]         # fnmatch on subsystem ids; omitted = every one
      - role: viewer
        subjects: ["authenticated"]
    anonymous: none                     # none | viewer | operator | admin

Roles are ordered (viewer < operator < admin) and a caller's role on a subsystem is
the highest any binding gives it there, so bindings only ever add. Without a policy
file OPEN_POLICY applies: everyone, anonymous callers included, is admin everywhere,
which is what the gateway did before it had policies.

The file is read with the node tree of PyYAML's safe loader rather than as plain
data, so every refusal can name the line, and so a YAML 1.1 surprise (`role: no`
read as false, a subsystem id `1e3` read as a number) is seen as the text written.
Anything the format does not know is refused instead of ignored: a misspelt key in
an authorization file would otherwise silently grant or deny.

PolicyFile keeps the policy current while the gateway runs: it re-stats the file at
most every few seconds and reloads it when it changed; a bad edit keeps the last
good policy (logged once per change), so a typo never takes the gateway down.
"""

from __future__ import annotations

import difflib
import fnmatch
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from flowwatch_gateway.access.identity import ANONYMOUS, Caller
from flowwatch_gateway.config import ConfigError
from flowwatch_gateway.registry.base import Clock, SystemClock

if TYPE_CHECKING:
    from flowwatch_gateway.config import GatewayConfig

__all__ = [
    "OPEN_POLICY",
    "Binding",
    "Policy",
    "PolicyError",
    "PolicyFile",
    "Role",
    "open_actions_warning",
]

log = logging.getLogger(__name__)

SETTING = "GATEWAY_POLICY_FILE"
# Cached caller views per Policy. A policy lives until the next reload; the bound only
# keeps a flood of distinct callers from growing one without limit.
MAX_CACHED_CALLERS = 10_000
# Characters of subsystem ids (registry validation) plus fnmatch's own.
_PATTERN = re.compile(r"[A-Za-z0-9._\-*?\[\]!]{1,200}")
_FNMATCH_MAGIC = re.compile(r"[*?\[]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NULL_TAG = "tag:yaml.org,2002:null"


class Role(IntEnum):
    """What a caller may do; each role includes the ones below it."""

    VIEWER = 1  # read runs, workflows, analytics
    OPERATOR = 2  # also act: retry, cancel, pause, resume, skip, bulk actions, reindex
    ADMIN = 3  # also see endpoints, the configuration and /status

    @property
    def label(self) -> str:
        """The name as written in the policy file and the audit record."""
        return self.name.lower()


_ROLES = {role.label: role for role in Role}
_ROLE_CHOICES = "viewer, operator or admin"
_ANONYMOUS_CHOICES = "none, viewer, operator or admin"
_SUBJECT_FORMS = "user:NAME, group:NAME, authenticated, anonymous or *"
_TOP_KEYS = ("bindings", "anonymous")
_BINDING_KEYS = ("role", "subjects", "subsystems")


class PolicyError(ConfigError):
    """The policy file cannot be used; the message names the line and what to write."""


@dataclass(frozen=True)
class Binding:
    """One role for some subjects, on every subsystem (None) or on matching ones."""

    role: Role
    subjects: tuple[str, ...]
    subsystems: tuple[str, ...] | None = None
    line: int = 0

    def applies_to(self, caller: Caller) -> bool:
        return any(_subject_matches(subject, caller) for subject in self.subjects)


def _subject_matches(subject: str, caller: Caller) -> bool:
    if subject == "*":
        return True
    if subject == "anonymous":
        return caller.anonymous
    if subject == "authenticated":
        return not caller.anonymous
    # A caller without an identity has no user and no trustworthy groups.
    if caller.anonymous:
        return False
    kind, _, name = subject.partition(":")
    if kind == "user":
        return caller.user == name
    return kind == "group" and name in caller.groups


def _matcher(patterns: Iterable[str]) -> Callable[[str], bool]:
    """One test for a set of fnmatch patterns: a set lookup plus one compiled regex."""
    exact = frozenset(p for p in patterns if not _FNMATCH_MAGIC.search(p))
    wild = sorted({p for p in patterns if _FNMATCH_MAGIC.search(p)})
    if not wild:
        return exact.__contains__
    regex = re.compile("|".join(fnmatch.translate(p) for p in wild))
    if not exact:
        return lambda subsystem_id: regex.match(subsystem_id) is not None
    return lambda subsystem_id: subsystem_id in exact or regex.match(subsystem_id) is not None


def _everything(_subsystem_id: str) -> bool:
    return True


def _nothing(_subsystem_id: str) -> bool:
    return False


@dataclass(frozen=True)
class _View:
    """What one caller gets from one policy, worked out once."""

    everywhere: Role | None  # the role on every subsystem
    scoped: tuple[tuple[Role, Callable[[str], bool]], ...]  # higher roles on some; best first
    highest: Role | None
    visible: Callable[[str], bool]


def _max_role(roles: Iterable[Role | None]) -> Role | None:
    present = [role for role in roles if role is not None]
    return max(present) if present else None


@dataclass(frozen=True)
class Policy:
    """Bindings plus the anonymous role; answers "which role has this caller here"."""

    bindings: tuple[Binding, ...] = ()
    anonymous: Role | None = None
    source: str = SETTING
    _views: dict[tuple[str, frozenset[str]] | None, _View] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    def role_on(self, caller: Caller, subsystem_id: str) -> Role | None:
        """The highest role any binding gives this caller on this subsystem."""
        view = self._view(caller)
        for role, matches in view.scoped:
            if matches(subsystem_id):
                return role
        return view.everywhere

    def role_everywhere(self, caller: Caller) -> Role | None:
        """The role this caller has on every subsystem, whatever its id."""
        return self._view(caller).everywhere

    def highest_role(self, caller: Caller) -> Role | None:
        """The highest role this caller has on any subsystem id (calls about none)."""
        return self._view(caller).highest

    def visible(self, caller: Caller) -> Callable[[str], bool]:
        """A test for the subsystem ids this caller may read (any role)."""
        return self._view(caller).visible

    def _view(self, caller: Caller) -> _View:
        # Only user and groups decide; keying on them (not on source or email) lets
        # one view serve every request of a caller.
        key = None if caller.anonymous else (caller.user or "", caller.groups)
        view = self._views.get(key)
        if view is None:
            if len(self._views) >= MAX_CACHED_CALLERS:
                self._views.clear()
            view = self._views[key] = self._build_view(caller)
        return view

    def _build_view(self, caller: Caller) -> _View:
        applying = [binding for binding in self.bindings if binding.applies_to(caller)]
        everywhere = _max_role(
            [self.anonymous if caller.anonymous else None]
            + [binding.role for binding in applying if binding.subsystems is None]
        )
        patterns_by_role: dict[Role, list[str]] = {}
        for binding in applying:
            if binding.subsystems is not None and (everywhere is None or binding.role > everywhere):
                patterns_by_role.setdefault(binding.role, []).extend(binding.subsystems)
        # Best role first: role_on stops at the first role whose patterns match.
        scoped: list[tuple[Role, Callable[[str], bool]]] = []
        seen: list[str] = []
        for role in sorted(patterns_by_role, reverse=True):
            seen.extend(patterns_by_role[role])
            scoped.append((role, _matcher(patterns_by_role[role])))
        highest = _max_role([everywhere, *patterns_by_role])
        if everywhere is not None:
            visible: Callable[[str], bool] = _everything
        elif seen:
            visible = _matcher(seen)
        else:
            visible = _nothing
        return _View(everywhere, tuple(scoped), highest, visible)

    @classmethod
    def parse(cls, text: str, source: str = SETTING) -> Policy:
        """Parse a policy file's text; raises PolicyError naming the line of the problem."""
        return _Parser(source).policy(text)

    def describe(self) -> str:
        """A short summary for log lines: how many bindings, and the anonymous role."""
        anonymous = self.anonymous.label if self.anonymous is not None else "none"
        return f"{len(self.bindings)} binding(s), anonymous: {anonymous}"


# Today's behaviour when no policy file is configured: nobody is refused anything.
OPEN_POLICY = Policy(
    bindings=(Binding(Role.ADMIN, ("*",)),),
    anonymous=Role.ADMIN,
    source="no GATEWAY_POLICY_FILE",
)


# --- parsing -----------------------------------------------------------------------------


class _Parser:
    def __init__(self, source: str) -> None:
        self._source = source

    def _error(self, node: yaml.Node | None, message: str) -> PolicyError:
        where = f" line {node.start_mark.line + 1}" if node is not None else ""
        return PolicyError(f"{self._source}{where}: {message}")

    def policy(self, text: str) -> Policy:
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = f" line {mark.line + 1}" if mark is not None else ""
            problem = exc.problem or exc.context or "cannot be read"
            raise PolicyError(f"{self._source}{where}: not valid YAML: {problem}") from None
        except yaml.YAMLError as exc:
            raise PolicyError(f"{self._source}: not valid YAML: {exc}") from None
        if root is None:
            raise PolicyError(
                f"{self._source}: the file is empty; write at least `bindings: []` "
                "(an empty file is more often a half-written one than a wish to refuse everyone)"
            )
        entries = self._mapping(root, "the file", _TOP_KEYS)
        if "bindings" not in entries:
            raise self._error(
                root,
                "no `bindings:` key; list the bindings under it, or write `bindings: []` "
                "to give roles through `anonymous:` only",
            )
        bindings_node = entries["bindings"]
        if not isinstance(bindings_node, yaml.SequenceNode):
            raise self._error(
                bindings_node,
                "`bindings:` must be a list of bindings, each starting with `- role: ...` "
                "(write `bindings: []` for none)",
            )
        bindings = tuple(
            self._binding(node, number) for number, node in enumerate(bindings_node.value, 1)
        )
        anonymous: Role | None = None
        if "anonymous" in entries:
            anonymous = self._anonymous(entries["anonymous"])
        return Policy(bindings=bindings, anonymous=anonymous, source=self._source)

    def _mapping(
        self, node: yaml.Node, what: str, allowed: tuple[str, ...]
    ) -> dict[str, yaml.Node]:
        if not isinstance(node, yaml.MappingNode):
            raise self._error(node, f"{what} must be a mapping of {', '.join(allowed)}")
        entries: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str) or key not in allowed:
                shown = key if isinstance(key, str) else "a non-text key"
                hint = difflib.get_close_matches(str(key), allowed, n=1)
                suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise self._error(
                    key_node,
                    f"{what}: unknown key {shown!r}{suggestion}; the keys are {', '.join(allowed)}",
                )
            if key in entries:
                raise self._error(key_node, f"{what}: {key!r} is given twice; keep one")
            entries[key] = value_node
        return entries

    def _text(self, node: yaml.Node, what: str, example: str) -> str:
        if not isinstance(node, yaml.ScalarNode) or node.tag == _NULL_TAG:
            raise self._error(node, f"{what} must be a single value, e.g. {example}")
        value: str = node.value
        return value

    def _texts(self, node: yaml.Node, what: str, example: str) -> list[tuple[yaml.Node, str]]:
        if not isinstance(node, yaml.SequenceNode):
            raise self._error(node, f"{what} must be a list, e.g. {what}: {example}")
        return [(item, self._text(item, f"each of {what}", example)) for item in node.value]

    def _binding(self, node: yaml.Node, number: int) -> Binding:
        what = f"binding {number}"
        entries = self._mapping(node, what, _BINDING_KEYS)
        if "role" not in entries:
            raise self._error(node, f"{what} has no `role:`; write role: {_ROLE_CHOICES}")
        role_text = self._text(entries["role"], f"{what}: role", "role: viewer")
        role = _ROLES.get(role_text.strip().lower())
        if role is None:
            raise self._error(
                entries["role"], f"{what}: unknown role {role_text!r}; write {_ROLE_CHOICES}"
            )
        if "subjects" not in entries:
            raise self._error(
                node, f'{what} has no `subjects:`; name who gets the role, e.g. ["group:sre"]'
            )
        subjects = [
            self._subject(item, text, what)
            for item, text in self._texts(entries["subjects"], "subjects", '["group:sre"]')
        ]
        if not subjects:
            raise self._error(
                entries["subjects"],
                f"{what}: `subjects: []` gives the role to nobody; name at least one, "
                f'e.g. ["group:sre"], or remove the binding',
            )
        subsystems: tuple[str, ...] | None = None
        if "subsystems" in entries:
            items = self._texts(entries["subsystems"], "subsystems", '["orders*", "billing"]')
            if not items:
                raise self._error(
                    entries["subsystems"],
                    f"{what}: `subsystems: []` applies nowhere; leave the key out to mean "
                    "every subsystem",
                )
            subsystems = tuple(self._pattern(item, text, what) for item, text in items)
        return Binding(role, tuple(subjects), subsystems, node.start_mark.line + 1)

    def _subject(self, node: yaml.Node, text: str, what: str) -> str:
        subject = text.strip()
        if subject in ("*", "authenticated", "anonymous"):
            return subject
        kind, sep, name = subject.partition(":")
        if sep and kind in ("user", "group"):
            if not name or name != name.strip() or _CONTROL.search(name):
                raise self._error(
                    node,
                    f"{what}: subject {text!r} needs a name after {kind}: "
                    f"(no spaces around it), e.g. {kind}:alice",
                )
            if _FNMATCH_MAGIC.search(name):
                raise self._error(
                    node,
                    f"{what}: subject {text!r}: names are matched exactly, not as "
                    "patterns; for every caller with an identity write authenticated",
                )
            return subject
        if not sep and subject.lower() in ("*", "authenticated", "anonymous", "everyone"):
            fix = "*" if subject.lower() == "everyone" else subject.lower()
            raise self._error(node, f"{what}: subject {text!r}: write {fix}")
        suggestion = (
            f"; write user:{subject} or group:{subject}"
            if not sep and subject and not _CONTROL.search(subject)
            else ""
        )
        raise self._error(
            node,
            f"{what}: subject {text!r} is not one of {_SUBJECT_FORMS}{suggestion}",
        )

    def _pattern(self, node: yaml.Node, text: str, what: str) -> str:
        pattern = text.strip()
        if _PATTERN.fullmatch(pattern):
            return pattern
        hint = ""
        if "," in pattern or " " in pattern:
            parts = [part for part in re.split(r"[,\s]+", pattern) if part]
            hint = (
                "; list each on its own: subsystems: ["
                + ", ".join(f'"{part}"' for part in parts)
                + "]"
            )
        raise self._error(
            node,
            f"{what}: subsystem pattern {text!r} can match no subsystem id (ids are 1-63 "
            f"of A-Za-z0-9._-; patterns add * ? [ ]){hint}",
        )

    def _anonymous(self, node: yaml.Node) -> Role | None:
        text = self._text(node, "anonymous", "anonymous: none")
        value = text.strip().lower()
        if value == "none":
            return None
        role = _ROLES.get(value)
        if role is None:
            raise self._error(node, f"anonymous: unknown role {text!r}; write {_ANONYMOUS_CHOICES}")
        return role


# --- the file, kept current --------------------------------------------------------------

_Signature = tuple[int, int, int, int]  # device, inode, size, mtime (ns)
_MISSING: _Signature = (-1, -1, -1, -1)


def _signature(stat: os.stat_result) -> _Signature:
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


class PolicyFile:
    """The policy in a file, reloaded when the file changes (and on reload())."""

    def __init__(
        self, path: Path, *, clock: Clock | None = None, check_interval_s: float = 2.0
    ) -> None:
        self.path = path
        self._source = f"{SETTING} {path}"
        self._clock: Clock = clock or SystemClock()
        self._interval = check_interval_s
        self._lock = threading.Lock()
        # At start a bad file is fatal: better refuse to start than guess a policy.
        self._signature, outcome = self._read()
        if isinstance(outcome, PolicyError):
            raise outcome
        self._policy: Policy = outcome
        self._next_check = self._clock.monotonic() + check_interval_s

    def current(self) -> Policy:
        """The policy in force; at most every check_interval_s this also re-stats the file."""
        now = self._clock.monotonic()
        if now >= self._next_check and self._lock.acquire(blocking=False):
            try:
                self._next_check = now + self._interval
                self._check()
            finally:
                self._lock.release()
        return self._policy

    def reload(self) -> bool:
        """Read the file now (SIGHUP); True when its policy was taken, False if it is bad."""
        with self._lock:
            self._next_check = self._clock.monotonic() + self._interval
            return self._take()

    def _check(self) -> None:
        try:
            signature = _signature(os.stat(self.path))
        except OSError:
            signature = _MISSING
        if signature != self._signature:
            self._take()

    def _take(self) -> bool:
        signature, outcome = self._read()
        # Remembered good or bad, so a bad version is reported once, not at every check.
        self._signature = signature
        if isinstance(outcome, PolicyError):
            log.error(
                "%s; still using the policy loaded before (%s)", outcome, self._policy.describe()
            )
            return False
        self._policy = outcome
        log.info("%s loaded: %s", self._source, outcome.describe())
        return True

    def _read(self) -> tuple[_Signature, Policy | PolicyError]:
        """The file's signature and its policy (or why it has none), from one open."""
        signature = _MISSING
        try:
            with self.path.open("rb") as file:
                # The signature of what was read: a change during the read shows later.
                signature = _signature(os.fstat(file.fileno()))
                text = file.read().decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            return signature, PolicyError(f"{self._source}: cannot read it ({exc})")
        try:
            return signature, Policy.parse(text, self._source)
        except PolicyError as exc:
            return signature, exc


# --- start-up warning --------------------------------------------------------------------


def open_actions_warning(config: GatewayConfig, policy: Policy | None = None) -> str | None:
    """The start-up warning when anyone who reaches the port may act, else None.

    `policy` defaults to what the configuration names (OPEN_POLICY without a file);
    pass the one already loaded to avoid reading the file twice.
    """
    if config.read_only or config.oidc_issuer or config.auth_proxy_trusted:
        return None
    if policy is None:
        policy = (
            OPEN_POLICY if config.policy_file is None else PolicyFile(config.policy_file).current()
        )
    role = policy.highest_role(ANONYMOUS)
    if role is None or role < Role.OPERATOR:
        return None
    why = (
        "no GATEWAY_POLICY_FILE is set"
        if config.policy_file is None
        else f"GATEWAY_POLICY_FILE gives callers without an identity the {role.label} role"
    )
    return (
        "ACTIONS ARE OPEN TO ANYONE: no GATEWAY_OIDC_ISSUER or GATEWAY_AUTH_PROXY_TRUSTED "
        f"is set, so no caller has an identity, and {why}: any client that reaches this "
        "port can retry, cancel, pause, resume and skip runs, and the audit trail can name "
        "none of them. Configure an identity source and a policy outside a trusted "
        "development network, or set GATEWAY_READ_ONLY=true."
    )

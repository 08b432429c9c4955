"""The policy file: parsing and its refusals, the role matrix, visibility, reloading."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

import pytest

from flowwatch_gateway.access.identity import Caller
from flowwatch_gateway.access.policy import (
    OPEN_POLICY,
    Policy,
    PolicyError,
    PolicyFile,
    Role,
    open_actions_warning,
)
from flowwatch_gateway.config import ConfigError, GatewayConfig
from tests.support.harness import FakeClock

POLICY_LOGGER = "flowwatch_gateway.access.policy"

EXAMPLE = """\
bindings:                      # roles: viewer < operator < admin
  - role: operator
    subjects: ["group:sre", "user:alice"]
    subsystems: ["orders*"]
  - role: viewer
    subjects: ["authenticated"]
anonymous: none
"""


def caller(user: str | None, groups: Iterable[str] = (), source: str = "oidc") -> Caller:
    # Every field by keyword, so this builds the real identity.Caller as well.
    return Caller(
        user=user,
        groups=frozenset(groups),
        source=source if user is not None else "anonymous",
        email=None,
    )


ANON = caller(None)
ALICE = caller("alice")
BOB = caller("bob")
SRE = caller("carol", ["sre", "web"])


# --- parsing -----------------------------------------------------------------------------


def test_the_documented_example_parses() -> None:
    policy = Policy.parse(EXAMPLE)
    assert policy.anonymous is None
    assert [(b.role, b.subjects, b.subsystems, b.line) for b in policy.bindings] == [
        (Role.OPERATOR, ("group:sre", "user:alice"), ("orders*",), 2),
        (Role.VIEWER, ("authenticated",), None, 5),
    ]


def test_roles_are_ordered_and_named() -> None:
    assert Role.VIEWER < Role.OPERATOR < Role.ADMIN
    assert [role.label for role in Role] == ["viewer", "operator", "admin"]


def test_anonymous_key_and_empty_bindings() -> None:
    policy = Policy.parse("bindings: []\nanonymous: Viewer\n")
    assert policy.bindings == () and policy.anonymous is Role.VIEWER
    assert Policy.parse("bindings: []").anonymous is None
    assert Policy.parse("anonymous: none\nbindings: []").anonymous is None


def test_subsystem_ids_are_taken_as_written() -> None:
    # YAML 1.1 would read these as a number and a boolean.
    policy = Policy.parse(
        "bindings:\n  - role: viewer\n    subjects: [user:x]\n    subsystems: [1e3, no]\n"
    )
    assert policy.bindings[0].subsystems == ("1e3", "no")


BAD_FILES = [
    ("", ["is empty", "bindings: []"]),
    ("# only a comment\n", ["is empty"]),
    ("anonymous: viewer\n", ["line 1", "no `bindings:` key", "bindings: []"]),
    ("- role: viewer\n", ["line 1", "the file must be a mapping of bindings, anonymous"]),
    ("bindings: [\n", ["line 2", "not valid YAML"]),
    ("bindings:\n  - role: viewer\n    subjects: [a\n", ["not valid YAML"]),
    ("bindings: []\n---\nbindings: []\n", ["not valid YAML"]),
    ("bindings: x\n", ["line 1", "must be a list of bindings", "- role:"]),
    ("bindings:\n", ["line 1", "must be a list of bindings"]),
    ("bindings: []\nbinding: []\n", ["line 2", "unknown key 'binding'", "did you mean 'bindings'"]),
    ("bindings: []\nbindings: []\n", ["line 2", "'bindings' is given twice"]),
    ("bindings:\n  - viewer\n", ["line 2", "binding 1 must be a mapping of role, subjects"]),
    (
        "bindings:\n  - role: viewer\n    subjects: ['*']\n  - role: owner\n    subjects: ['*']\n",
        ["line 4", "binding 2: unknown role 'owner'", "write viewer, operator or admin"],
    ),
    ("bindings:\n  - role:\n    subjects: ['*']\n", ["line 2", "binding 1: role must be a single"]),
    ("bindings:\n  - subjects: ['*']\n", ["line 2", "binding 1 has no `role:`"]),
    ("bindings:\n  - role: viewer\n", ["line 2", "binding 1 has no `subjects:`"]),
    (
        "bindings:\n  - role: viewer\n    subjects: []\n",
        ["line 3", "`subjects: []` gives the role to nobody"],
    ),
    (
        "bindings:\n  - role: viewer\n    subjects: user:alice\n",
        ["line 3", "subjects must be a list", '["group:sre"]'],
    ),
    (
        "bindings:\n  - role: viewer\n    subjects: [alice]\n",
        ["line 3", "subject 'alice' is not one of", "write user:alice or group:alice"],
    ),
    (
        "bindings:\n  - role: viewer\n    subjects: ['role:x']\n",
        ["line 3", "subject 'role:x' is not one of user:NAME, group:NAME"],
    ),
    ("bindings:\n  - role: viewer\n    subjects: ['user:']\n", ["needs a name after user:"]),
    ("bindings:\n  - role: viewer\n    subjects: ['group: sre']\n", ["no spaces around it"]),
    (
        "bindings:\n  - role: viewer\n    subjects: ['user:*']\n",
        ["matched exactly, not as patterns", "authenticated"],
    ),
    ("bindings:\n  - role: viewer\n    subjects: [Authenticated]\n", ["write authenticated"]),
    ("bindings:\n  - role: viewer\n    subjects: [everyone]\n", ["write *"]),
    (
        "bindings:\n  - role: viewer\n    subjects: ['*']\n    subsystem: [a]\n",
        ["line 4", "binding 1: unknown key 'subsystem'", "did you mean 'subsystems'"],
    ),
    (
        "bindings:\n  - role: viewer\n    subjects: ['*']\n    subsystems: []\n",
        ["line 4", "`subsystems: []` applies nowhere", "leave the key out"],
    ),
    (
        "bindings:\n  - role: viewer\n    subjects: ['*']\n    subsystems: ['orders, payments']\n",
        ["line 4", "can match no subsystem id", 'subsystems: ["orders", "payments"]'],
    ),
    (
        "bindings:\n  - role: viewer\n    subjects: ['*']\n    subsystems: ['a/b']\n",
        ["line 4", "subsystem pattern 'a/b' can match no subsystem id"],
    ),
    (
        "bindings: []\nanonymous: read\n",
        ["line 2", "anonymous: unknown role 'read'", "none, viewer"],
    ),
    ("bindings: []\nanonymous: no\n", ["anonymous: unknown role 'no'"]),
    ("bindings: []\nanonymous: [viewer]\n", ["line 2", "anonymous must be a single value"]),
]


@pytest.mark.parametrize(("text", "fragments"), BAD_FILES)
def test_bad_files_are_refused_naming_the_line_and_the_fix(text: str, fragments: list[str]) -> None:
    with pytest.raises(PolicyError) as caught:
        Policy.parse(text, source="GATEWAY_POLICY_FILE /etc/p.yaml")
    message = str(caught.value)
    assert message.startswith("GATEWAY_POLICY_FILE /etc/p.yaml")
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_a_policy_error_is_a_configuration_error() -> None:
    # So the CLI's `except ConfigError` turns a bad file at start into exit status 2.
    assert issubclass(PolicyError, ConfigError)


# --- the role matrix ---------------------------------------------------------------------


def test_example_role_matrix() -> None:
    policy = Policy.parse(EXAMPLE)
    assert policy.role_on(ALICE, "orders") is Role.OPERATOR
    assert policy.role_on(ALICE, "orders-eu") is Role.OPERATOR
    assert policy.role_on(ALICE, "billing") is Role.VIEWER
    assert policy.role_on(SRE, "orders-us") is Role.OPERATOR
    assert policy.role_on(SRE, "shipping") is Role.VIEWER
    assert policy.role_on(BOB, "orders") is Role.VIEWER
    assert policy.role_on(ANON, "orders") is None
    assert policy.highest_role(ALICE) is Role.OPERATOR
    assert policy.highest_role(BOB) is Role.VIEWER
    assert policy.highest_role(ANON) is None
    assert policy.role_everywhere(ALICE) is Role.VIEWER


def test_highest_role_wins_whatever_the_order() -> None:
    text = """\
bindings:
  - role: viewer
    subjects: ["*"]
  - role: admin
    subjects: ["user:alice"]
    subsystems: ["orders-eu"]
  - role: operator
    subjects: ["group:sre", "user:alice"]
    subsystems: ["orders*", "pay-[ab]", "?x"]
"""
    policy = Policy.parse(text)
    assert policy.role_on(ALICE, "orders-eu") is Role.ADMIN
    assert policy.role_on(ALICE, "orders-us") is Role.OPERATOR
    assert policy.role_on(ALICE, "pay-a") is Role.OPERATOR
    assert policy.role_on(ALICE, "pay-c") is Role.VIEWER
    assert policy.role_on(ALICE, "ax") is Role.OPERATOR
    assert policy.role_on(ALICE, "aax") is Role.VIEWER
    # fnmatch is case-sensitive here: subsystem ids are compared as registered.
    assert policy.role_on(ALICE, "ORDERS-EU") is Role.VIEWER
    assert policy.role_on(SRE, "orders-eu") is Role.OPERATOR
    assert policy.role_on(ANON, "orders-eu") is Role.VIEWER
    assert policy.highest_role(ALICE) is Role.ADMIN
    assert policy.highest_role(SRE) is Role.OPERATOR


def test_subject_kinds() -> None:
    text = """\
bindings:
  - role: admin
    subjects: ["user:root"]
  - role: operator
    subjects: ["group:sre"]
    subsystems: ["a"]
  - role: viewer
    subjects: ["authenticated"]
    subsystems: ["b"]
  - role: viewer
    subjects: ["anonymous"]
    subsystems: ["c"]
  - role: viewer
    subjects: ["*"]
    subsystems: ["d"]
"""
    policy = Policy.parse(text)
    root, sre = caller("root"), caller("dave", ["sre"])
    table = {
        "root": [policy.role_on(root, s) for s in "abcde"],
        "sre": [policy.role_on(sre, s) for s in "abcde"],
        "anon": [policy.role_on(ANON, s) for s in "abcde"],
    }
    admin, op, view = Role.ADMIN, Role.OPERATOR, Role.VIEWER
    assert table == {
        "root": [admin, admin, admin, admin, admin],
        "sre": [op, view, None, view, None],
        "anon": [None, None, view, view, None],
    }
    # user: is the exact name; group: needs membership.
    assert policy.role_on(caller("root2"), "e") is None
    assert policy.role_on(caller("sre"), "a") is None


def test_a_caller_without_identity_matches_no_user_or_group() -> None:
    # Groups on an anonymous caller were not vouched for by anything.
    policy = Policy.parse("bindings:\n  - role: admin\n    subjects: ['group:sre']\n")
    anonymous_with_groups = Caller(
        user=None, groups=frozenset({"sre"}), source="anonymous", email=None
    )
    assert policy.role_on(anonymous_with_groups, "x") is None


def test_the_anonymous_role_applies_everywhere_to_anonymous_callers_only() -> None:
    text = """\
bindings:
  - role: operator
    subjects: ["anonymous"]
    subsystems: ["sandbox*"]
anonymous: viewer
"""
    policy = Policy.parse(text)
    assert policy.role_on(ANON, "orders") is Role.VIEWER
    assert policy.role_on(ANON, "sandbox-1") is Role.OPERATOR
    assert policy.highest_role(ANON) is Role.OPERATOR
    assert policy.role_everywhere(ANON) is Role.VIEWER
    assert policy.role_on(ALICE, "orders") is None
    assert policy.highest_role(ALICE) is None
    # A binding below the anonymous role adds nothing.
    weaker = Policy.parse(
        "bindings:\n  - role: viewer\n    subjects: [anonymous]\n    subsystems: [x]\n"
        "anonymous: operator\n"
    )
    assert weaker.role_on(ANON, "x") is Role.OPERATOR
    assert weaker.role_on(ANON, "y") is Role.OPERATOR


def test_no_binding_no_role() -> None:
    policy = Policy.parse("bindings: []\n")
    for who in (ANON, ALICE):
        assert policy.role_on(who, "orders") is None
        assert policy.highest_role(who) is None
        assert not policy.visible(who)("orders")


def test_open_policy_is_todays_behaviour() -> None:
    for who in (ANON, ALICE, SRE):
        assert OPEN_POLICY.role_on(who, "anything") is Role.ADMIN
        assert OPEN_POLICY.highest_role(who) is Role.ADMIN
        assert OPEN_POLICY.visible(who)("anything")


# --- visible -----------------------------------------------------------------------------


def test_visible_follows_every_role() -> None:
    text = """\
bindings:
  - role: admin
    subjects: ["user:alice"]
    subsystems: ["orders"]
  - role: viewer
    subjects: ["group:sre"]
    subsystems: ["pay*", "ship-?"]
"""
    policy = Policy.parse(text)
    alice = policy.visible(ALICE)
    assert alice("orders") and not alice("orders-2") and not alice("payments")
    sre = policy.visible(SRE)
    assert sre("payments") and sre("ship-1") and not sre("ship-10") and not sre("orders")
    assert not policy.visible(ANON)("orders")
    assert not policy.visible(BOB)("payments")


def test_visible_is_worked_out_once_per_caller_and_policy() -> None:
    text = (
        "bindings:\n  - role: viewer\n    subjects: [group:sre, user:alice]\n    subsystems: [a*]\n"
    )
    policy = Policy.parse(text)
    first = policy.visible(SRE)
    assert first("abc") and not first("b")
    # Another request of the same caller (another source or email) reuses it.
    assert policy.visible(caller("carol", ["web", "sre"], source="proxy")) is first
    assert policy.visible(ALICE) is not first
    assert Policy.parse(text).visible(SRE) is not first


# --- the file, kept current --------------------------------------------------------------

VIEWERS = "bindings:\n  - role: viewer\n    subjects: [authenticated]\n"
OPERATORS = "bindings:\n  - role: operator\n    subjects: [authenticated]\n"
ADMINS = "bindings:\n  - role: admin\n    subjects: ['*']\nanonymous: admin\n"


class PolicyPath:
    """A policy file whose every write is seen as a change (its mtime moves on)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime_ns = 1_700_000_000 * 10**9

    def write(self, text: str) -> None:
        self.path.write_text(text)
        self._mtime_ns += 10**9
        os.utime(self.path, ns=(self._mtime_ns, self._mtime_ns))


@pytest.fixture
def policy_path(tmp_path: Path) -> PolicyPath:
    file = PolicyPath(tmp_path / "policy.yaml")
    file.write(VIEWERS)
    return file


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_changed_file_is_taken_at_the_next_check(policy_path: PolicyPath) -> None:
    clock = FakeClock()
    policy_file = PolicyFile(policy_path.path, clock=clock, check_interval_s=2.0)
    assert policy_file.current().role_on(ALICE, "x") is Role.VIEWER
    policy_path.write(OPERATORS)
    assert policy_file.current().role_on(ALICE, "x") is Role.VIEWER  # not checked yet
    clock.advance(2.0)
    assert policy_file.current().role_on(ALICE, "x") is Role.OPERATOR


def test_a_file_replaced_by_rename_is_taken(policy_path: PolicyPath, tmp_path: Path) -> None:
    # Same size and mtime, another inode: how a ConfigMap or `mv new policy.yaml` swaps it.
    clock = FakeClock()
    policy_file = PolicyFile(policy_path.path, clock=clock)
    same_size = VIEWERS.replace("viewer", "admin ")
    replacement = tmp_path / "new.yaml"
    replacement.write_text(same_size)
    stat = policy_path.path.stat()
    os.utime(replacement, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(replacement, policy_path.path)
    clock.advance(2.0)
    assert policy_file.current().role_on(ALICE, "x") is Role.ADMIN


def test_a_bad_edit_keeps_the_last_good_policy_and_is_logged_once(
    policy_path: PolicyPath, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, POLICY_LOGGER)
    clock = FakeClock()
    policy_file = PolicyFile(policy_path.path, clock=clock)
    good = policy_file.current()
    policy_path.write("bindings:\n  - role: owner\n    subjects: [authenticated]\n")
    for _ in range(5):
        clock.advance(2.0)
        assert policy_file.current() is good
    logged = errors(caplog)
    assert len(logged) == 1
    assert f"GATEWAY_POLICY_FILE {policy_path.path} line 2" in logged[0]
    assert "unknown role 'owner'" in logged[0]
    assert "still using the policy loaded before (1 binding(s), anonymous: none)" in logged[0]
    # A second, different bad edit is a change of its own: one more line.
    policy_path.write("bindings: [\n")
    clock.advance(2.0)
    assert policy_file.current() is good
    assert len(errors(caplog)) == 2
    # Fixing it is taken.
    policy_path.write(OPERATORS)
    clock.advance(2.0)
    assert policy_file.current().role_on(ALICE, "x") is Role.OPERATOR
    assert len(errors(caplog)) == 2
    assert any("loaded: 1 binding(s)" in r.getMessage() for r in caplog.records)


def test_a_removed_file_keeps_the_policy_and_a_new_one_is_taken(
    policy_path: PolicyPath, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, POLICY_LOGGER)
    clock = FakeClock()
    policy_file = PolicyFile(policy_path.path, clock=clock)
    good = policy_file.current()
    policy_path.path.unlink()
    for _ in range(3):
        clock.advance(2.0)
        assert policy_file.current() is good
    assert len(errors(caplog)) == 1
    assert "cannot read it" in errors(caplog)[0]
    policy_path.write(ADMINS)
    clock.advance(2.0)
    assert policy_file.current().role_on(ANON, "x") is Role.ADMIN


def test_reload_reads_at_once_and_says_whether_it_was_taken(
    policy_path: PolicyPath, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, POLICY_LOGGER)
    clock = FakeClock()
    policy_file = PolicyFile(policy_path.path, clock=clock, check_interval_s=3600)
    policy_path.write(OPERATORS)
    assert policy_file.reload() is True  # no waiting for the check interval
    assert policy_file.current().role_on(ALICE, "x") is Role.OPERATOR
    policy_path.write("bindings: nope\n")
    assert policy_file.reload() is False
    assert policy_file.current().role_on(ALICE, "x") is Role.OPERATOR
    assert len(errors(caplog)) == 1
    policy_path.write(ADMINS)
    assert policy_file.reload() is True
    assert policy_file.current().role_on(ANON, "x") is Role.ADMIN


def test_a_bad_file_at_start_is_an_error_naming_the_setting(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("bindings:\n  - role: viewer\n    subjects: [bob]\n")
    with pytest.raises(PolicyError, match=r"^GATEWAY_POLICY_FILE .*policy.yaml line 3: "):
        PolicyFile(path, clock=FakeClock())
    with pytest.raises(PolicyError, match="cannot read it"):
        PolicyFile(tmp_path / "missing.yaml", clock=FakeClock())
    path.write_bytes(b"bindings: []\n# \xff\n")
    with pytest.raises(PolicyError, match="cannot read it"):
        PolicyFile(path, clock=FakeClock())


# --- the start-up warning ----------------------------------------------------------------


def test_open_actions_warning(tmp_path: Path) -> None:
    message = open_actions_warning(GatewayConfig())
    assert message is not None
    assert message.startswith("ACTIONS ARE OPEN TO ANYONE")
    assert "no GATEWAY_POLICY_FILE is set" in message
    assert "GATEWAY_READ_ONLY=true" in message
    assert open_actions_warning(GatewayConfig(read_only=True)) is None
    with_issuer = GatewayConfig(oidc_issuer="https://login.example.com", oidc_audience="fw")
    assert open_actions_warning(with_issuer) is None
    assert open_actions_warning(GatewayConfig(auth_proxy_trusted=("10.0.0.0/8",))) is None

    path = tmp_path / "policy.yaml"
    path.write_text("bindings: []\nanonymous: viewer\n")
    assert open_actions_warning(GatewayConfig(policy_file=path)) is None
    path.write_text("bindings:\n  - role: operator\n    subjects: ['*']\n    subsystems: [x]\n")
    message = open_actions_warning(GatewayConfig(policy_file=path))
    assert message is not None
    assert "gives callers without an identity the operator role" in message
    # An already loaded policy is used as it is.
    assert open_actions_warning(GatewayConfig(policy_file=path), Policy.parse(VIEWERS)) is None

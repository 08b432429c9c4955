"""The access settings: policy file, audit log, OIDC, trusted proxies, allowed hosts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flowwatch_gateway.config import SETTINGS, ConfigError, GatewayConfig
from flowwatch_gateway.processes import child_env

ISSUER = "https://login.example.com/realms/ops"


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text("bindings: []\n")
    return path


def test_defaults_keep_todays_behaviour() -> None:
    config = GatewayConfig.from_sources({}, {})
    assert config.policy_file is None and config.audit_log is None
    assert (config.oidc_issuer, config.oidc_audience) == ("", "")
    assert config.oidc_groups_claim == "groups"
    assert config.auth_proxy_trusted == () and config.allowed_hosts == ()


def every_setting(policy: Path, audit: Path) -> dict[str, str]:
    return {
        "GATEWAY_POLICY_FILE": str(policy),
        "GATEWAY_AUDIT_LOG": str(audit),
        "GATEWAY_OIDC_ISSUER": ISSUER,
        "GATEWAY_OIDC_AUDIENCE": "flowwatch-gateway",
        "GATEWAY_OIDC_GROUPS_CLAIM": "roles",
        "GATEWAY_AUTH_PROXY_TRUSTED": "10.0.0.5, 10.1.0.0/16,fd00::/8",
        "GATEWAY_ALLOWED_HOSTS": "Gateway.Example.com, *.internal,gw,[::1]",
    }


def check_every_setting(config: GatewayConfig, policy: Path, audit: Path) -> None:
    assert config.policy_file == policy and config.audit_log == audit
    assert config.oidc_issuer == ISSUER and config.oidc_audience == "flowwatch-gateway"
    assert config.oidc_groups_claim == "roles"
    assert config.auth_proxy_trusted == ("10.0.0.5/32", "10.1.0.0/16", "fd00::/8")
    assert config.allowed_hosts == ("gateway.example.com", "*.internal", "gw", "::1")


def test_every_setting_through_the_environment(policy: Path, tmp_path: Path) -> None:
    audit = tmp_path / "audit.log"
    config = GatewayConfig.from_sources(every_setting(policy, audit), {})
    check_every_setting(config, policy, audit)


def test_every_setting_through_its_flag(policy: Path, tmp_path: Path) -> None:
    audit = tmp_path / "audit.log"
    flag_of = {setting.env: setting.flag for setting in SETTINGS}
    flags: dict[str, str | None] = {
        flag_of[env]: value for env, value in every_setting(policy, audit).items()
    }
    assert set(flags) == {
        "--policy-file",
        "--audit-log",
        "--oidc-issuer",
        "--oidc-audience",
        "--oidc-groups-claim",
        "--auth-proxy-trusted",
        "--allowed-hosts",
    }
    # Flags win over the environment.
    env = {"GATEWAY_OIDC_GROUPS_CLAIM": "groups", "GATEWAY_ALLOWED_HOSTS": "other"}
    config = GatewayConfig.from_sources(env, flags)
    check_every_setting(config, policy, audit)


def test_empty_values_mean_unset(policy: Path) -> None:
    config = GatewayConfig.from_sources(
        {
            "GATEWAY_POLICY_FILE": "",
            "GATEWAY_AUDIT_LOG": " ",
            "GATEWAY_OIDC_ISSUER": "",
            "GATEWAY_OIDC_AUDIENCE": "",
            "GATEWAY_AUTH_PROXY_TRUSTED": "",
            "GATEWAY_ALLOWED_HOSTS": "",
        },
        {},
    )
    assert config == GatewayConfig()


def test_to_env_round_trip(policy: Path, tmp_path: Path) -> None:
    config = GatewayConfig.from_sources(every_setting(policy, tmp_path / "audit.log"), {})
    env = config.to_env()
    assert GatewayConfig.from_env(env) == config
    assert env["GATEWAY_AUTH_PROXY_TRUSTED"] == "10.0.0.5/32,10.1.0.0/16,fd00::/8"
    assert GatewayConfig.from_env(GatewayConfig().to_env()) == GatewayConfig()


@pytest.mark.parametrize(
    ("env", "flags", "expected"),
    [
        ({"GATEWAY_POLICY_FILE": "/nonexistent/p.yaml"}, {}, "GATEWAY_POLICY_FILE="),
        ({}, {"--policy-file": "/nonexistent/p.yaml"}, "no readable file at /nonexistent"),
        ({"GATEWAY_AUDIT_LOG": "/nonexistent/dir/a.log"}, {}, "/nonexistent/dir does not exist"),
        ({}, {"--audit-log": "/tmp"}, "--audit-log='/tmp': /tmp is a directory"),
        ({"GATEWAY_OIDC_ISSUER": "login.example.com"}, {}, "expected the issuer's URL"),
        ({"GATEWAY_OIDC_ISSUER": "ftp://login.example.com"}, {}, "GATEWAY_OIDC_ISSUER='ftp:"),
        ({"GATEWAY_OIDC_ISSUER": "https://u:p@login.example.com"}, {}, "must not contain"),
        ({"GATEWAY_OIDC_ISSUER": "https://login.example.com/?x=1"}, {}, "a query"),
        ({"GATEWAY_OIDC_ISSUER": "https://login.example.com:99999"}, {}, "invalid port"),
        (
            {"GATEWAY_OIDC_ISSUER": ISSUER},
            {},
            "GATEWAY_OIDC_AUDIENCE (--oidc-audience) must be set when GATEWAY_OIDC_ISSUER",
        ),
        ({"GATEWAY_OIDC_AUDIENCE": "fw"}, {}, "GATEWAY_OIDC_ISSUER is not"),
        (
            {"GATEWAY_OIDC_ISSUER": ISSUER},
            {"--oidc-audience": "two words"},
            "--oidc-audience='two words': must not contain spaces",
        ),
        ({"GATEWAY_OIDC_GROUPS_CLAIM": ""}, {}, "GATEWAY_OIDC_GROUPS_CLAIM (--oidc-groups-claim)"),
        ({"GATEWAY_OIDC_GROUPS_CLAIM": "a\tb"}, {}, "must not contain spaces"),
        ({"GATEWAY_AUTH_PROXY_TRUSTED": "proxy.internal"}, {}, "not an IP address or CIDR"),
        ({"GATEWAY_AUTH_PROXY_TRUSTED": "10.0.0.1/8"}, {}, "has host bits set; write 10.0.0.0/8"),
        ({}, {"--auth-proxy-trusted": "10.0.0.0/33"}, "--auth-proxy-trusted='10.0.0.0/33'"),
        ({"GATEWAY_ALLOWED_HOSTS": "https://gw.example.com"}, {}, "write the host only"),
        ({"GATEWAY_ALLOWED_HOSTS": "gw.example.com/ui"}, {}, "e.g. gw.example.com"),
        ({"GATEWAY_ALLOWED_HOSTS": "gw example.com"}, {}, "not a host name or pattern"),
        ({"GATEWAY_ALLOWED_HOSTS": "gw:8091"}, {}, "write the host without it (gw)"),
    ],
)
def test_bad_values_are_refused_with_a_message(
    env: dict[str, str], flags: dict[str, str | None], expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        GatewayConfig.from_sources(env, flags)
    assert expected in str(info.value)


def test_an_issuer_is_kept_as_written() -> None:
    # Tokens carry `iss` as text: a trailing slash must not be added or removed.
    for issuer in ("https://a.example.com/", "http://127.0.0.1:8080/realms/x"):
        config = GatewayConfig(oidc_issuer=issuer, oidc_audience="fw")
        assert GatewayConfig.from_env(config.to_env()).oidc_issuer == issuer


def test_cli_refuses_an_issuer_without_audience_with_exit_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "flowwatch_gateway.cli", "serve", "--oidc-issuer", ISSUER],
        env=child_env({}),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "GATEWAY_OIDC_AUDIENCE (--oidc-audience) must be set" in result.stderr

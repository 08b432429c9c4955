"""Configuration: Go durations, env vars vs flags, validation messages, the CLI's exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowwatch_gateway.config import (
    SETTINGS,
    ConfigError,
    GatewayConfig,
    format_go_duration,
    parse_go_duration,
)
from flowwatch_gateway.processes import child_env


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("30s", 30.0),
        ("1m30s", 90.0),
        ("500ms", 0.5),
        ("1.5h", 5400.0),
        ("250us", 0.00025),
        ("250µs", 0.00025),
        ("100ns", 1e-7),
        (".5s", 0.5),
        ("1h2m3s4ms", 3723.004),
        ("-1.5s", -1.5),
    ],
)
def test_parse_go_duration(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds, abs=1e-12)


@pytest.mark.parametrize("text", ["", "10", "s", "1x", "1 s", "1s 2m", "--1s", "1.2.3s", "+"])
def test_parse_go_duration_rejects_what_go_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_go_duration(text)


@given(st.integers(min_value=0, max_value=10**15))
def test_format_go_duration_round_trips_to_the_nanosecond(nanoseconds: int) -> None:
    seconds = nanoseconds / 1e9
    assert round(parse_go_duration(format_go_duration(seconds)) * 1e9) == round(seconds * 1e9)


def test_defaults_match_the_go_gateway() -> None:
    config = GatewayConfig.from_sources({}, {})
    assert (config.host, config.port) == ("0.0.0.0", 8091)
    assert config.api_key == ""
    assert config.grace_period == 30.0
    assert config.heartbeat == 10.0
    assert config.run_cache_size == 100_000
    assert config.ui_origins == ("http://localhost:5173",)
    assert config.upstream_timeout == 5.0
    assert config.server == "pyvoy"
    assert config.log_level == "info"
    assert config.tls_cert is None and config.tls_key is None and config.tls_client_ca is None


def test_documented_defaults_parse_to_the_dataclass_defaults() -> None:
    documented = {s.env: s.default for s in SETTINGS}
    assert GatewayConfig.from_sources(documented, {}) == GatewayConfig()


def test_env_values_are_read() -> None:
    config = GatewayConfig.from_sources(
        {
            "GATEWAY_ADDR": "127.0.0.1:9000",
            "GATEWAY_API_KEY": "k",
            "GATEWAY_GRACE_PERIOD": "1m",
            "GATEWAY_HEARTBEAT": "250ms",
            "GATEWAY_RUN_CACHE_SIZE": "10",
            "UI_ORIGIN": "https://a.example.com, https://b.example.com/",
            "GATEWAY_UPSTREAM_TIMEOUT": "2s",
            "GATEWAY_SERVER": "uvicorn",
            "GATEWAY_LOG_LEVEL": "WARN",
        },
        {},
    )
    assert (config.host, config.port, config.api_key) == ("127.0.0.1", 9000, "k")
    assert (config.grace_period, config.heartbeat, config.upstream_timeout) == (60, 0.25, 2)
    assert config.run_cache_size == 10
    assert config.ui_origins == ("https://a.example.com", "https://b.example.com")
    assert (config.server, config.log_level) == ("uvicorn", "warning")


def test_flags_override_env() -> None:
    env = {"GATEWAY_HEARTBEAT": "5s", "GATEWAY_ADDR": ":1000"}
    config = GatewayConfig.from_sources(env, {"--heartbeat": "1s", "--addr": None})
    assert config.heartbeat == 1.0
    assert config.port == 1000


@pytest.mark.parametrize(
    ("addr", "host", "port"),
    [(":8091", "0.0.0.0", 8091), ("[::1]:80", "::1", 80), ("gw.local:443", "gw.local", 443)],
)
def test_addr_forms(addr: str, host: str, port: int) -> None:
    config = GatewayConfig.from_sources({"GATEWAY_ADDR": addr}, {})
    assert (config.host, config.port) == (host, port)
    assert GatewayConfig.from_sources({"GATEWAY_ADDR": config.addr}, {}) == config


@pytest.mark.parametrize(
    ("env", "flags", "expected"),
    [
        ({"GATEWAY_HEARTBEAT": "10"}, {}, "GATEWAY_HEARTBEAT='10'"),
        ({"GATEWAY_HEARTBEAT": "0"}, {}, "GATEWAY_HEARTBEAT='0': must be greater than 0"),
        ({}, {"--heartbeat": "-1s"}, "--heartbeat='-1s': must be greater than 0"),
        ({"GATEWAY_GRACE_PERIOD": "-5s"}, {}, "GATEWAY_GRACE_PERIOD='-5s': must not be negative"),
        ({"GATEWAY_RUN_CACHE_SIZE": "0"}, {}, "GATEWAY_RUN_CACHE_SIZE='0': must be at least 1"),
        ({"GATEWAY_RUN_CACHE_SIZE": "lots"}, {}, "GATEWAY_RUN_CACHE_SIZE='lots'"),
        ({"GATEWAY_ADDR": "8091"}, {}, "GATEWAY_ADDR='8091': expected host:port"),
        ({}, {"--addr": ":70000"}, "--addr=':70000': port must be between 1 and 65535"),
        ({"GATEWAY_ADDR": ":0"}, {}, "GATEWAY_ADDR=':0'"),
        ({"UI_ORIGIN": "localhost:5173"}, {}, "UI_ORIGIN='localhost:5173'"),
        ({"UI_ORIGIN": "http://ui/app"}, {}, "must not contain a path"),
        ({"GATEWAY_SERVER": "gunicorn"}, {}, "GATEWAY_SERVER='gunicorn': expected one of"),
        ({"GATEWAY_LOG_LEVEL": "loud"}, {}, "GATEWAY_LOG_LEVEL='loud'"),
        ({"GATEWAY_TLS_CERT": "/nonexistent/cert.pem"}, {}, "no readable file"),
    ],
)
def test_invalid_values_name_the_source_and_value(
    env: dict[str, str], flags: dict[str, str | None], expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        GatewayConfig.from_sources(env, flags)
    assert expected in str(info.value)


def test_tls_cert_and_key_must_come_together(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError, match="must be set together"):
        GatewayConfig.from_sources({"GATEWAY_TLS_CERT": str(cert)}, {})
    with pytest.raises(ConfigError, match="GATEWAY_TLS_CLIENT_CA"):
        GatewayConfig.from_sources({"GATEWAY_TLS_CLIENT_CA": str(cert)}, {})
    both = GatewayConfig.from_sources(
        {"GATEWAY_TLS_CERT": str(cert), "GATEWAY_TLS_KEY": str(cert)}, {}
    )
    assert both.tls_enabled


def test_to_env_rebuilds_the_same_config(tmp_path: Path) -> None:
    pem = tmp_path / "x.pem"
    pem.write_text("x")
    config = GatewayConfig(
        host="127.0.0.1",
        port=1234,
        api_key="secret",
        grace_period=1.25,
        heartbeat=0.2,
        run_cache_size=7,
        ui_origins=("http://a", "https://b:8443"),
        upstream_timeout=0.75,
        tls_cert=pem,
        tls_key=pem,
        tls_client_ca=pem,
        server="uvicorn",
        log_level="debug",
    )
    assert GatewayConfig.from_env(config.to_env()) == config


def test_describe_never_shows_the_api_key() -> None:
    text = GatewayConfig(api_key="hunter2").describe()
    assert "hunter2" not in text
    assert "api_key=set" in text


def test_cli_prints_config_errors_and_exits_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "flowwatch_gateway.cli", "serve", "--heartbeat", "fast"],
        env=child_env({"GATEWAY_GRACE_PERIOD": "1s"}),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--heartbeat='fast'" in result.stderr
    env_error = subprocess.run(
        [sys.executable, "-m", "flowwatch_gateway.cli", "serve"],
        env=child_env({"GATEWAY_ADDR": "nowhere"}),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert env_error.returncode == 2
    assert "GATEWAY_ADDR='nowhere'" in env_error.stderr


def test_cli_help_lists_every_setting() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "flowwatch_gateway.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0
    for setting in SETTINGS:
        assert setting.flag in result.stdout
        assert setting.env in result.stdout

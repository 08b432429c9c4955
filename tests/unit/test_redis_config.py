"""GATEWAY_REDIS_URL: parsed, round-tripped through to_env, and never shown with its password."""

from __future__ import annotations

import pytest

from flowwatch_gateway.config import ConfigError, GatewayConfig
from flowwatch_gateway.urls import redact_url


@pytest.mark.parametrize(
    "url",
    ["redis://127.0.0.1:6379/0", "rediss://:s3cret@redis.internal:6380/2", "redis://redis"],
)
def test_redis_urls_are_accepted_and_round_trip(url: str) -> None:
    config = GatewayConfig.from_sources({}, {"--redis-url": url})
    assert config.redis_url == url
    assert GatewayConfig.from_env(config.to_env()) == config


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://redis:6379", "not a Redis URL"),
        ("redis://", "no host"),
        ("redis://redis:port/0", "invalid port"),
        ("redis://redis/zero", "database number"),
    ],
)
def test_bad_redis_urls_stop_start_up(url: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem) as raised:
        GatewayConfig.from_sources({"GATEWAY_REDIS_URL": url}, {})
    assert "GATEWAY_REDIS_URL" in str(raised.value)


def test_the_password_is_never_described_or_echoed_in_errors() -> None:
    config = GatewayConfig.from_sources({"GATEWAY_REDIS_URL": "redis://u:hunter2@r:6379/0"}, {})
    assert "hunter2" not in config.describe()
    assert "redis_url=redis://u:***@r:6379/0" in config.describe()
    assert "redis_url=unset" in GatewayConfig().describe()
    with pytest.raises(ConfigError) as raised:
        GatewayConfig.from_sources({}, {"--redis-url": "redis://:hunter2@r:6379/x"})
    assert "hunter2" not in str(raised.value)
    assert "redis://:***@r:6379/x" in str(raised.value)


def test_redact_url_keeps_everything_but_the_password() -> None:
    assert (
        redact_url("rediss://:pw@h:1/3?ssl_cert_reqs=none")
        == "rediss://:***@h:1/3?ssl_cert_reqs=none"
    )
    assert redact_url("redis://h:1/0") == "redis://h:1/0"

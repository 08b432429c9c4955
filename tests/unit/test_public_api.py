"""The curated public API, and the SDK working without the server's dependencies."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap

import pytest

import flowwatch_gateway

SERVER_ONLY = ("starlette", "pyvoy", "uvicorn", "httpx")


def test_every_public_name_resolves_to_its_defining_object() -> None:
    assert len(flowwatch_gateway.__all__) == len(set(flowwatch_gateway.__all__))
    for name in flowwatch_gateway.__all__:
        value = getattr(flowwatch_gateway, name)
        home = importlib.import_module(value.__module__)
        assert getattr(home, name) is value, name
        assert name in home.__all__, f"{name} is not in {home.__name__}.__all__"
    assert set(flowwatch_gateway.__all__) <= set(dir(flowwatch_gateway))


def test_unknown_names_are_attribute_errors() -> None:
    with pytest.raises(AttributeError, match="no attribute 'connect_to_gatway'"):
        _ = flowwatch_gateway.connect_to_gatway  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "module",
    [
        "flowwatch_gateway.api",
        "flowwatch_gateway.api.adapter",
        "flowwatch_gateway.api.context",
        "flowwatch_gateway.api.limits",
        "flowwatch_gateway.api.listing",
        "flowwatch_gateway.api.ordering",
        "flowwatch_gateway.api.services",
        "flowwatch_gateway.subsystem",
        "flowwatch_gateway.subsystem.backoff",
        "flowwatch_gateway.subsystem.client",
        "flowwatch_gateway.subsystem.describe",
        "flowwatch_gateway.subsystem.options",
    ],
)
def test_sdk_modules_declare_all_and_every_name_exists(module: str) -> None:
    imported = importlib.import_module(module)
    for name in imported.__all__:
        assert hasattr(imported, name), f"{module}.__all__ names {name}, which is missing"


# Runs in a fresh interpreter in which the server's packages cannot be imported, as
# after `pip install flowwatch-gateway` without extras.
WITHOUT_SERVER_DEPS = textwrap.dedent(
    """
    import sys
    from importlib.abc import MetaPathFinder

    BLOCKED = set(sys.argv[1:])

    class Blocker(MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is not installed (blocked by the test)")
            return None

    sys.meta_path.insert(0, Blocker())

    import flowwatch_gateway
    from flowwatch_gateway import *  # noqa: F403

    for name in flowwatch_gateway.__all__:
        getattr(flowwatch_gateway, name)
    options = flowwatch_gateway.ClientOptions(
        gateway_url="http://127.0.0.1:8091",
        subsystem_id="orders",
        local_endpoint="http://127.0.0.1:9101",
        backoff=flowwatch_gateway.Backoff(initial=0.5),
    )
    assert options.backoff.initial == 0.5
    apps = flowwatch_gateway.flowwatch_asgi_apps(flowwatch_gateway.EngineAdapter())
    assert apps and all(app.path.startswith("/flowwatch.v1.") for app in apps)
    try:
        flowwatch_gateway.flowwatch_routes(flowwatch_gateway.EngineAdapter())
    except ImportError as exc:
        print("flowwatch_routes:", exc)
    else:
        raise AssertionError("flowwatch_routes worked without Starlette")
    loaded = sorted({m.split(".")[0] for m in sys.modules} & BLOCKED)
    assert not loaded, loaded
    print("ok")
    """
)


def test_the_sdk_imports_and_configures_without_server_dependencies() -> None:
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_SERVER_DEPS, *SERVER_ONLY],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "ok"
    # The message tells the author which extra to install.
    assert "flowwatch-gateway[server]" in lines[0], lines

"""Observability end to end: /metrics via Prometheus' parser, traceparent, /status in Chromium.

Real processes: a pyvoy gateway, demo subsystems (`flowwatch-demo subsystem`, whose
SDK echoes each ping so heartbeat round trips are measured) or uvicorn demo servers
with a registrar. Subsystems are SIGKILLed as an operator's bad day would do it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from flowwatch_gateway.processes import Child, free_port
from tests.support.harness import (
    GatewayProcess,
    SubsystemProcess,
    start_gateway,
    start_subsystem,
    subsystem_states,
)
from tests.support.upstreams import post, start_demo_server, start_registrar, wait_until

API_KEY = "observability-key"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def scrape(url: str) -> dict[str, list[Any]]:
    """family name -> samples, parsed by prometheus_client's own text parser."""
    response = httpx.get(url, timeout=5)
    response.raise_for_status()
    return {f.name: f.samples for f in text_string_to_metric_families(response.text)}


def sample(parsed: dict[str, list[Any]], family: str, name: str, **labels: str) -> float:
    """Sum of the family's samples called `name` whose labels include `labels`."""
    return sum(
        float(s.value)
        for s in parsed.get(family, [])
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def eventually(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    wait_until(check, timeout, what)


@contextlib.contextmanager
def gateway_with_subsystems(
    *ids: str, extra: tuple[str, ...] = ()
) -> Iterator[tuple[GatewayProcess, dict[str, SubsystemProcess]]]:
    """A gateway (300 ms heartbeat, long grace) and demo subsystems, all connected."""
    with start_gateway(
        "--heartbeat", "300ms", "--grace-period", "60s", "--api-key", API_KEY, *extra
    ) as gateway:
        subsystems: dict[str, SubsystemProcess] = {}
        try:
            for sid in ids:
                subsystems[sid] = start_subsystem(gateway.url, sid, api_key=API_KEY)
            eventually(
                lambda: subsystem_states(gateway.url) == dict.fromkeys(ids, "connected"),
                "every subsystem connected",
            )
            yield gateway, subsystems
        finally:
            for process in subsystems.values():
                process.close()


def sigkill(process: Child) -> None:
    """Kill the subsystem's whole process group (pyvoy runs Envoy as a child)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def test_metrics_parse_and_follow_a_killed_subsystem() -> None:
    metrics_port = free_port()
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    with gateway_with_subsystems(
        "alpha", "beta", extra=("--metrics-addr", f"127.0.0.1:{metrics_port}")
    ) as (gateway, subsystems):
        # /metrics lives on its own listener only.
        assert httpx.get(f"{gateway.url}/metrics", timeout=5).status_code == 404
        runs = post(gateway.url, "RunService/ListRuns", {"pagination": {"limit": 20}})
        assert runs.status_code == 200
        run_id = runs.json()["runs"][0]["id"]
        # The first GetRun looks the owner up; the second finds it cached.
        for _ in range(2):
            assert post(gateway.url, "RunService/GetRun", {"runId": run_id}).status_code == 200

        def rtt_measured() -> bool:
            parsed = scrape(metrics_url)
            rtt = "flowwatch_gateway_heartbeat_rtt_seconds"
            return sample(parsed, rtt, f"{rtt}_count") > 0

        eventually(rtt_measured, "a heartbeat round trip")
        parsed = scrape(metrics_url)
        subsystems_family = "flowwatch_gateway_subsystems"
        assert sample(parsed, subsystems_family, subsystems_family, state="connected") == 2
        assert sample(parsed, subsystems_family, subsystems_family, state="stale") == 0
        registrations = "flowwatch_gateway_registrations"
        accepted = sample(parsed, registrations, f"{registrations}_total", result="accepted")
        assert accepted == 2
        duration = "flowwatch_gateway_upstream_request_duration_seconds"
        assert sample(parsed, duration, f"{duration}_count", rpc="ListRuns", code="ok") >= 2
        width = "flowwatch_gateway_fanout_width"
        assert sample(parsed, width, f"{width}_count", rpc="ListRuns") == 1
        assert sample(parsed, width, f"{width}_sum", rpc="ListRuns") == 2
        hits = "flowwatch_gateway_run_owner_cache_hits"
        assert sample(parsed, hits, f"{hits}_total") >= 1  # the second GetRun
        size = "flowwatch_gateway_run_owner_cache_size"
        assert sample(parsed, size, size) >= 1
        assert "flowwatch_gateway_partial_failures" in parsed

        sigkill(subsystems["beta"])

        def beta_stale() -> bool:
            stale = sample(scrape(metrics_url), subsystems_family, subsystems_family, state="stale")
            return stale == 1

        eventually(beta_stale, "the killed subsystem counted stale")
        parsed = scrape(metrics_url)
        assert sample(parsed, subsystems_family, subsystems_family, state="connected") == 1
        # The UI's next list call misses beta: one partial failure.
        partial = post(gateway.url, "RunService/ListRuns", {"pagination": {"limit": 5}})
        assert "beta: stale" in partial.headers["flowwatch-partial-failure"]
        parsed = scrape(metrics_url)
        failures = "flowwatch_gateway_partial_failures"
        assert sample(parsed, failures, f"{failures}_total", rpc="ListRuns") == 1
        # No sample anywhere is labelled with a subsystem id.
        families = text_string_to_metric_families(httpx.get(metrics_url, timeout=5).text)
        for family in families:
            for s in family.samples:
                assert not {"alpha", "beta"} & set(s.labels.values()), s


@pytest.mark.parametrize("propagate", [True, False])
def test_traceparent_reaches_the_subsystem_only_when_enabled(propagate: bool) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    args = ("--trace-propagation", "true") if propagate else ()
    server, endpoint = start_demo_server("traced", 3, now, print_header="traceparent")
    with (
        server,
        start_gateway("--heartbeat", "300ms", *args) as gateway,
        start_registrar(gateway.url, "traced", endpoint),
    ):
        eventually(lambda: subsystem_states(gateway.url) == {"traced": "connected"}, "registration")
        response = httpx.post(
            f"{gateway.url}/flowwatch.v1.RunService/ListRuns",
            json={"pagination": {"limit": 5}},
            headers={"Connect-Protocol-Version": "1", "traceparent": TRACEPARENT},
            timeout=10,
        )
        assert response.status_code == 200
        # The listing taught the gateway the owner: GetRun takes the passthrough.
        run_id = response.json()["runs"][0]["id"]
        got = httpx.post(
            f"{gateway.url}/flowwatch.v1.RunService/GetRun",
            json={"runId": run_id},
            headers={"Connect-Protocol-Version": "1", "traceparent": TRACEPARENT},
            timeout=10,
        )
        assert got.status_code == 200, got.text
        forwarded = [
            f"HEADER /flowwatch.v1.RunService/{rpc} traceparent {TRACEPARENT}"
            for rpc in ("ListRuns", "GetRun")
        ]
        if propagate:
            eventually(
                lambda: all(line in server.logs() for line in forwarded),
                "the forwarded traceparent",
                5,
            )
        else:
            assert response.json().get("runs")  # the call did reach the subsystem
            assert "HEADER" not in server.logs()


def chromium_paths() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        message = "needs Debian's chromium and chromium-driver (python3 dev.py test installs them)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return chromium, driver


@pytest.mark.slow
def test_status_page_in_chromium_shows_a_killed_subsystem_turn_stale(tmp_path: Path) -> None:
    chromium, driver_path = chromium_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument("--window-size=1400,900")
    with gateway_with_subsystems("orders", "payments") as (gateway, subsystems):
        browser = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
        try:
            browser.get(f"{gateway.url}/status")

            def states() -> dict[str, str]:
                # Read while the page may be reloading (it refreshes itself every 5 s).
                try:
                    rows = browser.find_elements(By.CSS_SELECTOR, "tr[data-subsystem]")
                    return {
                        str(r.get_attribute("data-subsystem")): str(r.get_attribute("data-state"))
                        for r in rows
                    }
                except Exception:
                    return {}

            eventually(
                lambda: states() == {"orders": "connected", "payments": "connected"},
                "both subsystems listed as connected",
            )
            assert "FlowWatch Gateway" in browser.title
            assert browser.find_element(By.ID, "readiness").text == "ready"
            loaded_at = browser.execute_script("return performance.timeOrigin")

            sigkill(subsystems["payments"])
            # No driver.refresh(): the page's own meta refresh must bring the news.
            eventually(
                lambda: states() == {"orders": "connected", "payments": "stale"},
                "payments shown stale after the page refreshed itself",
            )
            assert browser.execute_script("return performance.timeOrigin") != loaded_at
            row = browser.find_element(By.CSS_SELECTOR, 'tr[data-subsystem="payments"]')
            assert "stale" in row.text

            screenshot = tmp_path / "status.png"
            assert browser.save_screenshot(str(screenshot))
            data = screenshot.read_bytes()
            assert data.startswith(PNG_SIGNATURE) and len(data) > 1000
            print(f"status page screenshot: {screenshot} ({len(data)} bytes)")
        finally:
            browser.quit()

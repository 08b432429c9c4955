"""The Dockerfile's steps, run without Docker: build, install into a fresh venv, CMD, HEALTHCHECK.

Docker is not available here, so this test reads the Dockerfile and replays it: the
files it COPYs form the build context, `pip install ".[server]"` becomes building a wheel and
installing it into an empty venv (dependencies from the pip cache or index), CMD is
started from that venv outside the source tree, and the HEALTHCHECK command must
succeed against it (and fail once it is stopped).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flowwatch_gateway.processes import child_env, free_port
from tests.support.harness import ROOT

DOCKERFILE = ROOT / "Dockerfile"
IMAGE_PORT = "8091"


def instructions() -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per Dockerfile instruction, continuation lines joined."""
    joined: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    result = []
    for line in joined:
        keyword, _, rest = line.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def only(keyword: str) -> str:
    (value,) = [rest for key, rest in instructions() if key == keyword]
    return value


def test_dockerfile_shape() -> None:
    assert only("FROM") == "python:3.11-slim"
    user = only("USER")
    assert user not in ("root", "0")
    assert only("EXPOSE") == IMAGE_PORT
    assert json.loads(only("CMD")) == ["flowwatch-gateway", "serve"]
    assert "GATEWAY_ADDR=:8091" in only("ENV").split()
    assert "flowwatch_gateway.serving.healthcheck" in only("HEALTHCHECK")
    # `flowwatch-gateway serve` needs the server extra; the base package is the SDK only.
    assert "server" in installed_extras()


def installed_extras() -> list[str]:
    """The extras the image's `pip install` of the build context names ("server", ...)."""
    run = only("RUN")
    match = re.search(r"""pip install ["']?\.(?:\[([\w,-]+)\])?["']?(?:\s|$)""", run)
    assert match, f"the RUN step does not pip install the build context: {run}"
    return match.group(1).split(",") if match.group(1) else []


def _healthcheck_command() -> list[str]:
    spec = only("HEALTHCHECK")
    command: list[str] = json.loads(spec[spec.index("CMD") + len("CMD") :].strip())
    return command


def _build_context(into: Path) -> Path:
    """Copy what the Dockerfile COPYs; a missing source would fail `docker build` too."""
    for key, rest in instructions():
        if key != "COPY":
            continue
        *sources, destination = rest.split()
        for source in sources:
            origin = ROOT / source
            assert origin.exists(), f"Dockerfile copies {source}, which does not exist"
            target = into / (destination if len(sources) == 1 and destination != "./" else source)
            if origin.is_dir():
                shutil.copytree(
                    origin, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
                )
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, target)
    return into


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_image_steps_install_serve_and_pass_the_healthcheck(tmp_path: Path) -> None:
    context = _build_context(tmp_path / "context")
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(dist), str(context)],
        check=True, timeout=300,
    )  # fmt: skip
    (wheel,) = dist.glob("flowwatch_gateway-*.whl")
    extras = ",".join(installed_extras())
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
         "--disable-pip-version-check", f"{wheel}[{extras}]" if extras else str(wheel)],
        check=True, timeout=600,
    )  # fmt: skip

    port = str(free_port())
    cmd = json.loads(only("CMD"))
    cmd[0] = str(venv / "bin" / cmd[0])
    check = _healthcheck_command()
    check[0] = str(venv / "bin" / check[0])
    workdir = tmp_path / "run"  # like WORKDIR /: nothing importable from the source tree
    workdir.mkdir()
    env = child_env({"GATEWAY_ADDR": f"127.0.0.1:{port}"})  # the image's ENV, on a free port
    env.pop("PYTHONPATH", None)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"

    log = (tmp_path / "gateway.log").open("wb")
    gateway = subprocess.Popen(
        cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline and gateway.poll() is None:
            status = subprocess.run(check, cwd=workdir, env=env, capture_output=True).returncode
            if status == 0:
                break
            time.sleep(0.5)
        logs = (tmp_path / "gateway.log").read_text(errors="replace")
        assert status == 0, f"HEALTHCHECK never passed:\n{logs}"
        where = "import flowwatch_gateway; print(flowwatch_gateway.__file__)"
        installed = subprocess.run(
            [str(venv / "bin" / "python"), "-c", where],
            cwd=workdir, env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert installed.stdout.startswith(str(venv)), installed.stdout
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(30) == 0
        after = subprocess.run(check, cwd=workdir, env=env, capture_output=True).returncode
        assert after != 0, "HEALTHCHECK must fail when the gateway is down"
    finally:
        if gateway.poll() is None:
            os.killpg(gateway.pid, signal.SIGKILL)
            gateway.wait(10)
        log.close()

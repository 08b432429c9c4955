"""Child processes for the demo launcher, the benchmarks and the tests.

Every child runs in its own session (process group) by default: the terminal's
Ctrl-C reaches only the parent, which then stops its children in order, and a group
SIGKILL also removes what a child started itself (the Envoy under pyvoy). Output
goes to a temporary file unless a stream is given, so a failure can show it.

Nothing here is imported by `flowwatch-gateway serve`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self, TypeVar

STOP_TIMEOUT_SECONDS = 15.0
# After SIGKILL a process is gone at once; this only bounds waiting for the kernel.
REAP_TIMEOUT_SECONDS = 5.0
POLL_SECONDS = 0.1

# Settings a developer's shell may carry that would silently change a child's behaviour.
_LEAKY_ENV_PREFIXES = ("GATEWAY_",)
_LEAKY_ENV_NAMES = ("UI_ORIGIN", "FLOWWATCH_GATEWAY_API_KEY")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on `host`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ without gateway settings, plus `extra`: only what the caller means to set."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(_LEAKY_ENV_PREFIXES) and key not in _LEAKY_ENV_NAMES
    }
    env.update(extra or {})
    return env


class ChildError(RuntimeError):
    """A child exited or never became ready; the message carries its output."""


def http_ok(url: str) -> Callable[[], bool]:
    """A readiness check: GET `url` answers 200."""
    # httpx comes with the demo and dev extras, not with the SDK this package also is.
    import httpx

    def check() -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(url, timeout=1.0).status_code == 200
        return False

    return check


class Child:
    """One child process: start, wait until ready, stop (SIGTERM, then SIGKILL), close.

    `output=None` keeps stdout and stderr in a temporary file (see `logs`); a stream
    such as sys.stderr passes them through instead. `start` may be called again after
    the process exited (a restart); the captured output accumulates.
    """

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        output: IO[Any] | None = None,
        new_session: bool = True,
    ) -> None:
        self.name = name
        self.command = list(command)
        self.env = dict(env) if env is not None else child_env()
        self.cwd = cwd
        self.new_session = new_session
        self._output = output
        self._log: IO[bytes] | None = None
        if output is None:
            self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        self._proc: subprocess.Popen[bytes] | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        if self._proc is not None and self._proc.poll() is None:
            raise ChildError(f"{self.name} is already running (pid {self._proc.pid})")
        out = self._log if self._log is not None else self._output
        self._proc = subprocess.Popen(
            self.command,
            env=self.env,
            cwd=self.cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=self.new_session,
        )
        return self

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise ChildError(f"{self.name} was never started")
        return self._proc

    @property
    def started(self) -> bool:
        return self._proc is not None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def wait_for(self, ready: Callable[[], bool], timeout: float, what: str = "ready") -> None:
        """Poll `ready` until it is true; ChildError with the output if the child exits or
        the timeout passes first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ChildError(
                    f"{self.name} exited with {self.proc.returncode} before it was {what}:\n"
                    + self.logs()
                )
            if ready():
                return
            time.sleep(POLL_SECONDS)
        raise ChildError(f"{self.name} not {what} after {timeout:g}s:\n{self.logs()}")

    def wait_http_ok(self, url: str, timeout: float) -> None:
        """wait_for(GET `url` answers 200)."""
        self.wait_for(http_ok(url), timeout, f"serving {url}")

    def terminate(self, sig: int = signal.SIGTERM) -> None:
        """Send `sig` to the child itself (not its group): it stops what it started."""
        if self.running:
            self.proc.send_signal(sig)

    def wait_or_kill(self, deadline: float) -> int:
        """The exit status; past `deadline` (time.monotonic) the whole group is killed."""
        try:
            return self.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"{self.name} did not stop in time; killing it", file=sys.stderr)
            self.kill()
            return self.proc.wait()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_SECONDS) -> int:
        """Send `sig`, wait up to `timeout`, then SIGKILL; returns the exit status."""
        self.terminate(sig)
        return self.wait_or_kill(time.monotonic() + timeout)

    def kill(self) -> None:
        """SIGKILL the child and, in its own session, everything it started; safe to repeat."""
        if self._proc is None:
            return
        if self.new_session:
            # The group outlives its leader when a grandchild (Envoy) is left behind.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)
        elif self._proc.poll() is None:
            self._proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(REAP_TIMEOUT_SECONDS)

    def logs(self) -> str:
        """Everything the child wrote so far ("" when its output was passed through)."""
        if self._log is None or self._log.closed:
            return ""
        self._log.flush()
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def close(self) -> None:
        """Kill whatever is left and drop the captured output."""
        self.kill()
        if self._log is not None:
            self._log.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and self.logs():
            print(f"--- {self.name} output ---\n{self.logs()}", file=sys.stderr)
        self.close()


def stop_together(
    children: Iterable[Child], timeout: float = STOP_TIMEOUT_SECONDS
) -> dict[str, int]:
    """SIGTERM all at once, one shared deadline, SIGKILL stragglers; name -> exit status."""
    started = [child for child in children if child.started]
    for child in started:
        child.terminate()
    deadline = time.monotonic() + timeout
    return {child.name: child.wait_or_kill(deadline) for child in started}


C = TypeVar("C", bound=Child)


class ChildGroup:
    """Children that stop latest-started first, so e.g. subsystems leave before their gateway."""

    def __init__(self) -> None:
        self.children: list[Child] = []
        self._stopped: set[int] = set()

    def start(self, child: C) -> C:
        """Start `child` as a member of this group."""
        self.children.append(child)
        return child.start()

    def stop_all(self, timeout: float = STOP_TIMEOUT_SECONDS) -> dict[str, int]:
        """Stop every child not stopped yet, one after another; name -> exit status.

        Calling it again returns only the children stopped by that call.
        """
        statuses: dict[str, int] = {}
        for child in reversed(self.children):
            if id(child) in self._stopped or not child.started:
                continue
            statuses[child.name] = child.stop(timeout=timeout)
            self._stopped.add(id(child))
        return statuses

    def logs(self) -> str:
        return "\n".join(f"--- {child.name} ---\n{child.logs()}" for child in self.children)

    def close(self) -> None:
        for child in self.children:
            child.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc is not None:
                print(self.logs(), file=sys.stderr)
            self.stop_all()
        finally:
            self.close()

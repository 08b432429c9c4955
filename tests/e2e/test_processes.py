"""flowwatch_gateway.processes with real short-lived Python children."""

from __future__ import annotations

import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from flowwatch_gateway.processes import (
    Child,
    ChildError,
    ChildGroup,
    child_env,
    free_port,
    stop_together,
)

# Generous: these bound waiting on a busy machine, they are never asserted on.
WITHIN = 30.0


def python(name: str, code: str) -> Child:
    return Child(name, [sys.executable, "-c", code])


def print_then_wait(marker: str, *, ignore_sigterm: bool = False) -> str:
    ignore = "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if ignore_sigterm else ""
    return f"import signal, time\n{ignore}print({marker!r}, flush=True)\ntime.sleep(600)\n"


def gone(pid: int) -> bool:
    """Exited: no /proc entry, or a zombie waiting for a reaper that is not ours."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def says(child: Child, text: str) -> Callable[[], bool]:
    return lambda: text in child.logs()


def poll(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WITHIN
    while not predicate():
        assert time.monotonic() < deadline, f"never {what}"
        time.sleep(0.05)


def test_free_port_can_be_bound() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_child_env_drops_gateway_settings_and_adds_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_HEARTBEAT", "1s")
    monkeypatch.setenv("UI_ORIGIN", "http://x")
    monkeypatch.setenv("FLOWWATCH_GATEWAY_API_KEY", "k")
    monkeypatch.setenv("KEEP_ME", "yes")
    env = child_env({"GATEWAY_ADDR": "127.0.0.1:1"})
    assert env["KEEP_ME"] == "yes"
    assert env["GATEWAY_ADDR"] == "127.0.0.1:1"
    assert not {"GATEWAY_HEARTBEAT", "UI_ORIGIN", "FLOWWATCH_GATEWAY_API_KEY"} & env.keys()


def test_output_of_both_streams_is_captured() -> None:
    with python("talker", "import sys; print('out'); print('err', file=sys.stderr)") as child:
        child.start()
        assert child.proc.wait(WITHIN) == 0
        assert "out" in child.logs()
        assert "err" in child.logs()


def test_output_can_pass_through_to_a_stream(tmp_path: Path) -> None:
    with (tmp_path / "out.txt").open("wb") as stream:
        child = Child("talker", [sys.executable, "-c", "print('through')"], output=stream)
        with child:
            child.start()
            assert child.proc.wait(WITHIN) == 0
            assert child.logs() == ""
    assert "through" in (tmp_path / "out.txt").read_text()


def test_wait_for_returns_once_ready_and_stop_sends_sigterm() -> None:
    with python("sleeper", print_then_wait("ready")) as child:
        child.start()
        child.wait_for(says(child, "ready"), WITHIN)
        assert child.running
        assert child.stop() == -signal.SIGTERM
        assert not child.running


def test_wait_for_reports_an_early_exit_with_the_output() -> None:
    with python("crasher", "import sys; print('boom'); sys.exit(3)") as child:
        child.start()
        with pytest.raises(ChildError, match="crasher exited with 3") as failure:
            child.wait_for(lambda: False, WITHIN)
        assert "boom" in str(failure.value)


def test_wait_for_gives_up_at_the_timeout() -> None:
    with python("sleeper", print_then_wait("never ready")) as child:
        child.start()
        with pytest.raises(ChildError, match="sleeper not ready"):
            child.wait_for(lambda: False, 0.3)
        assert child.running


def test_stop_kills_a_child_that_ignores_sigterm() -> None:
    with python("stubborn", print_then_wait("ready", ignore_sigterm=True)) as child:
        child.start()
        child.wait_for(says(child, "ready"), WITHIN)
        assert child.stop(timeout=0.5) == -signal.SIGKILL


def test_kill_takes_the_childs_own_children_too() -> None:
    code = (
        "import subprocess, sys, time\n"
        "grandchild = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "print(f'grandchild {grandchild.pid}', flush=True)\n"
        "time.sleep(600)\n"
    )
    with python("parent", code) as child:
        child.start()
        child.wait_for(lambda: "grandchild " in child.logs(), WITHIN)
        grandchild = int(child.logs().split("grandchild ")[1].split()[0])
        assert not gone(grandchild)
        child.kill()
        assert child.returncode == -signal.SIGKILL
        poll(lambda: gone(grandchild), "killed the grandchild")


def test_a_child_can_be_started_again_after_it_exited() -> None:
    with python("again", "print('run')") as child:
        child.start()
        assert child.proc.wait(WITHIN) == 0
        with pytest.raises(ChildError, match="already running"):
            child.start().start()
        assert child.proc.wait(WITHIN) == 0
        assert child.logs().count("run") == 2


def test_group_stops_the_latest_started_first_and_each_child_once(tmp_path: Path) -> None:
    order = tmp_path / "order.txt"
    code = (
        "import signal, sys, time\n"
        "def leave(*_):\n"
        f"    open({str(order)!r}, 'a').write(sys.argv[1] + '\\n')\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, leave)\n"
        "print('ready', flush=True)\n"
        "time.sleep(600)\n"
    )
    with ChildGroup() as group:
        for name in ("first", "second", "third"):
            child = group.start(Child(name, [sys.executable, "-c", code, name]))
            child.wait_for(says(child, "ready"), WITHIN)
        assert group.stop_all() == {"third": 0, "second": 0, "first": 0}
        assert order.read_text().split() == ["third", "second", "first"]
        assert group.stop_all() == {}


def test_stop_together_signals_every_child() -> None:
    children = [python(name, print_then_wait("ready")) for name in ("a", "b")]
    try:
        for child in children:
            child.start()
            child.wait_for(says(child, "ready"), WITHIN)
        assert stop_together(children) == {"a": -signal.SIGTERM, "b": -signal.SIGTERM}
    finally:
        for child in children:
            child.close()


def test_output_is_shown_when_the_block_fails(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(RuntimeError), python("witness", "print('last words')") as child:
        child.start()
        child.proc.wait(WITHIN)
        raise RuntimeError("test failed")
    shown = capsys.readouterr().err
    assert "--- witness output ---" in shown
    assert "last words" in shown

"""The gateway's command and the demo's command stay apart."""

from __future__ import annotations

import argparse
import subprocess
import sys

from flowwatch_gateway import cli
from flowwatch_gateway.demo import cli as demo_cli

# A fresh interpreter: in the test process other tests have long imported the demo.
LOADS_NO_DEMO = """
import sys
from flowwatch_gateway import cli
cli.build_parser().parse_args(["serve", "--log-level", "info"])
loaded = sorted(m for m in sys.modules if m.startswith("flowwatch_gateway.demo"))
print(loaded)
sys.exit(1 if loaded else 0)
"""


def commands(parser: argparse.ArgumentParser) -> set[str]:
    return {
        name
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for name in action.choices
    }


def test_the_gateway_command_never_imports_the_demo() -> None:
    result = subprocess.run(
        [sys.executable, "-c", LOADS_NO_DEMO], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_each_command_has_its_own_subcommands() -> None:
    assert commands(cli.build_parser()) == {"serve"}
    assert commands(demo_cli.build_parser()) == {"demo", "subsystem"}


def test_demo_module_runs_as_a_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "flowwatch_gateway.demo", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: flowwatch-demo")

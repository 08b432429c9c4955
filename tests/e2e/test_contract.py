"""The .proto files keep the FlowWatch v1 wire contract (shared checker) and buf's lint."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"


def test_protos_keep_the_wire_contract() -> None:
    checker = SHARED / "contract" / "check_contract.py"
    assert checker.is_file(), f"contract checker missing at {checker}"
    result = subprocess.run(
        [sys.executable, str(checker), "proto"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 incompatibilities" in result.stdout


# buf comes from the dev extra (buf-bin), installed next to this interpreter.
BUF = shutil.which("buf", path=str(Path(sys.executable).parent)) or shutil.which("buf")


@pytest.mark.skipif(BUF is None, reason="buf CLI not installed (pip install -e '.[dev]')")
def test_buf_lint_passes() -> None:
    assert BUF is not None
    result = subprocess.run([BUF, "lint"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr

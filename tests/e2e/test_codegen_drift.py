"""The committed stubs are exactly what scripts/genproto.py generates from proto/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "flowwatch_gateway" / "gen"


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def test_generated_code_matches_the_protos(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    subprocess.run(
        [sys.executable, "scripts/genproto.py", "--out", str(out)],
        cwd=ROOT,
        check=True,
        timeout=120,
    )
    fresh, committed = _tree(out), _tree(COMMITTED)
    assert sorted(fresh) == sorted(committed), "files differ: run scripts/genproto.py"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"out of date (run scripts/genproto.py): {stale}"

"""Who may register which subsystem id: the shared key and per-subsystem keys.

GATEWAY_API_KEYS_FILE holds one `pattern key` pair per line; `#` starts a comment
and blank lines are ignored. A pattern is a subsystem id or an fnmatch pattern
(`orders`, `billing-*`). An id covered by any line must present one of the keys of
the lines that match it (list an id twice to rotate its key); the shared
GATEWAY_API_KEY is not accepted for it, so a key that leaks lets its holder claim
only the ids it was issued for. Ids the file does not cover need the shared key;
with a file and no shared key they cannot register at all. With neither, anyone who
can reach the gateway may register any id (`open` is True, and start-up warns).

Keys are compared in constant time against every candidate, so timing reveals
neither a key nor which line matched.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class KeyEntry:
    pattern: str
    key: str
    line: int


def parse_keys_file(text: str, source: str = "GATEWAY_API_KEYS_FILE") -> tuple[KeyEntry, ...]:
    """Parse the file's text; raises ValueError naming the line of the first problem."""
    entries = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(
                f"{source} line {number}: expected `<subsystem id or pattern> <key>`, "
                f"got {len(parts)} field(s)"
            )
        entries.append(KeyEntry(parts[0], parts[1], number))
    return tuple(entries)


def load_keys_file(path: Path) -> tuple[KeyEntry, ...]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    entries = parse_keys_file(text, str(path))
    if not entries:
        raise ValueError(f"{path} has no `<subsystem id or pattern> <key>` lines")
    return entries


def _digest(key: str) -> bytes:
    # Equal-length digests keep compare_digest from revealing a key's length.
    return hashlib.sha256(key.encode()).digest()


class ApiKeys:
    """Decides whether a presented key may register a subsystem id."""

    def __init__(self, shared_key: str = "", entries: tuple[KeyEntry, ...] = ()) -> None:
        self._shared = _digest(shared_key) if shared_key else None
        self._entries = tuple((entry.pattern, _digest(entry.key)) for entry in entries)
        self._has_file = bool(entries)

    @property
    def open(self) -> bool:
        """True when any caller may register any id (no key of any kind configured)."""
        return self._shared is None and not self._has_file

    def accepts(self, subsystem_id: str, presented: str) -> bool:
        if self.open:
            return True
        candidates = [
            digest
            for pattern, digest in self._entries
            if fnmatch.fnmatchcase(subsystem_id, pattern)
        ]
        if not candidates and self._shared is not None:
            candidates = [self._shared]
        given = _digest(presented)
        matched = False
        for digest in candidates:  # no early exit: the time taken does not depend on a match
            matched |= hmac.compare_digest(given, digest)
        return matched

"""Who is calling: the shape the policy and the audit trail read.

A minimal stand-in; the identity work (token verification, trusted proxy headers)
replaces this module with the real one of the same shape.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ANONYMOUS", "Caller"]


@dataclass(frozen=True)
class Caller:
    user: str | None
    groups: frozenset[str] = frozenset()
    source: str = "anonymous"
    email: str | None = None

    @property
    def anonymous(self) -> bool:
        return self.user is None


ANONYMOUS = Caller(None)

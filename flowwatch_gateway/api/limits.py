"""Page sizes the FlowWatch API defines, applied the same way by every server here."""

from __future__ import annotations

__all__ = ["DEFAULT_PAGE_SIZE", "MAX_PAGE_SIZE", "effective_page_size"]

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100


def effective_page_size(requested: int) -> int:
    """The page size FlowWatch servers apply: 0 or less means the default, capped at the max."""
    if requested <= 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)

"""Sizes the FlowWatch API allows, applied the same way by every server here."""

from __future__ import annotations

__all__ = ["DEFAULT_PAGE_SIZE", "MAX_BULK_RUN_IDS", "MAX_PAGE_SIZE", "effective_page_size"]

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
# Run ids in one BulkRetry/BulkCancel: each unknown id may cost a lookup in every subsystem.
MAX_BULK_RUN_IDS = 1000


def effective_page_size(requested: int) -> int:
    """The page size FlowWatch servers apply: 0 or less means the default, capped at the max."""
    if requested <= 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)

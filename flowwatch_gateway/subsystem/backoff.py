"""How long the subsystem client waits before it dials the gateway again.

Pure arithmetic with an injectable random source, so tests can check the whole
policy in milliseconds and without timing.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True)
class Backoff:
    """Reconnect delays; injectable so tests can run the whole policy in milliseconds."""

    initial: float = 1.0
    maximum: float = 30.0
    multiplier: float = 2.0
    # A connection accepted and alive this long resets the failure count.
    stable_after: float = 30.0

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ValueError(
                f"backoff needs 0 < initial <= maximum, got initial={self.initial}s "
                f"maximum={self.maximum}s"
            )
        if self.multiplier < 1:
            raise ValueError(f"backoff multiplier must be at least 1, got {self.multiplier}")
        if self.stable_after < 0:
            raise ValueError(f"backoff stable_after must not be negative, got {self.stable_after}")

    def ceiling(self, failures: int) -> float:
        """The largest delay after `failures` consecutive failures (0 = the first one)."""
        # Cap the exponent: a long outage must not overflow the float.
        return min(self.maximum, self.initial * self.multiplier ** min(failures, 64))

    def failure_delay(self, failures: int, rng: random.Random) -> float:
        """Full jitter: anywhere in [0, ceiling], so many subsystems do not retry in step."""
        return rng.uniform(0.0, self.ceiling(failures))

    def disconnect_delay(self, rng: random.Random) -> float:
        """After a DisconnectCommand: full jitter over [0, initial].

        A draining gateway disconnects all its subsystems at once; a fixed delay would
        bring every one of them back in the same instant.
        """
        return rng.uniform(0.0, self.ceiling(0))

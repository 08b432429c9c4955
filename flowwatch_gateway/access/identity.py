"""Who is calling: the `Caller` every identity source produces, and `AuthError`."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ANONYMOUS", "AuthError", "Caller"]


@dataclass(frozen=True)
class Caller:
    """One caller of the gateway's API, as an identity source established it.

    `user` is the token's `sub`, the auth proxy's user or the client certificate's
    subject; None is an anonymous caller. `source` says which of those vouched for it:
    "oidc", "proxy", "mtls" or "anonymous".
    """

    user: str | None
    groups: frozenset[str] = frozenset()
    source: str = "anonymous"
    email: str | None = None

    @property
    def anonymous(self) -> bool:
        return self.user is None


ANONYMOUS = Caller(user=None)


class AuthError(Exception):
    """A credential was presented and could not be accepted.

    `message` says what was missing, malformed or expired in words fit for the caller:
    it never quotes the token or a secret. `retryable` is True when the fault is not
    the caller's (the token issuer's keys could not be fetched yet), so the same
    request may succeed later: map it to `unavailable`, the others to
    `unauthenticated`.
    """

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable

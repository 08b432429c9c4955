"""What a Connect error code means to the gateway and its clients: one home for every class.

A code either says that a call never got a real answer (the peer could not be
reached, timed out, or the call was cancelled), or it is the peer's answer about the
request itself. Fan-out, routing, discovery, HTTP version negotiation and the
subsystem client all decide with these sets, so they cannot drift apart.
"""

from __future__ import annotations

from connectrpc.code import Code
from connectrpc.errors import ConnectError

__all__ = [
    "ANSWER_CODES",
    "NEGOTIATION_FAILURE_CODES",
    "REJECTION_CODES",
    "RETRYABLE_CODES",
    "TRANSPORT_CODES",
    "ReplyTooLarge",
    "UpstreamUnreached",
    "describe_failure",
    "from_python_exception",
    "is_subsystems_answer",
]

# No answer from the subsystem: it was unreachable, too slow, or the call was cut.
# UNKNOWN and INTERNAL are here because the HTTP client reports broken connections so.
TRANSPORT_CODES = frozenset(
    {Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED, Code.CANCELED, Code.UNKNOWN, Code.INTERNAL}
)

# Worth another try later: the subsystem may not listen yet, or was busy.
RETRYABLE_CODES = frozenset({Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED})

# Codes with which a subsystem answers a request itself (rather than failing to);
# when every subsystem gives the same one, the caller gets it as it is.
ANSWER_CODES = frozenset(
    {
        Code.INVALID_ARGUMENT,
        Code.NOT_FOUND,
        Code.UNIMPLEMENTED,
        Code.FAILED_PRECONDITION,
        Code.OUT_OF_RANGE,
        Code.PERMISSION_DENIED,
        Code.UNAUTHENTICATED,
        Code.RESOURCE_EXHAUSTED,
    }
)

# A probe failing with one of these over h2c means "try HTTP/1.1": the server did not
# speak HTTP/2, as opposed to answering over it with an error.
NEGOTIATION_FAILURE_CODES = frozenset({Code.UNAVAILABLE, Code.UNKNOWN, Code.INTERNAL})

# The gateway refused a registration: retrying quickly cannot fix it. ALREADY_EXISTS:
# another live process holds the subsystem id; retrying at the slowest pace keeps such
# a pair to a few attempts a minute, and takes the id over once the holder is stale.
REJECTION_CODES = frozenset(
    {
        Code.UNAUTHENTICATED,
        Code.PERMISSION_DENIED,
        Code.INVALID_ARGUMENT,
        Code.ALREADY_EXISTS,
    }
)


class UpstreamUnreached(ConnectError):
    """A call that never reached the subsystem (refused, reset, unresolvable, or refused
    by the endpoint policy). Raised by the gateway's upstream transport, so that it can
    be told apart from an error the subsystem answered with the same code."""


class ReplyTooLarge(ConnectError):
    """A subsystem's reply (or one message of its stream) grew past the gateway's cap and
    was cut off while it arrived: resource_exhausted, for that subsystem alone."""


def from_python_exception(exc: ConnectError) -> bool:
    """Whether this error was made from a Python exception, its message that exception's
    text (a broken connection, bytes that do not decode as the message): connectrpc,
    like the gateway, raises such errors `from` the exception. Words for a log, not for
    a caller."""
    return exc.__cause__ is not None


def is_subsystems_answer(exc: ConnectError) -> bool:
    """Whether the subsystem itself answered with this error: its code and message are
    then its own words and reach the caller as they are. Timeouts and cancellations are
    the gateway's doing, whatever a subsystem might have said; an error made from an
    exception on the gateway's side of the call is no answer at all, and neither is a
    reply the gateway cut off for its size (what the subsystem meant never arrived)."""
    if isinstance(exc, UpstreamUnreached | ReplyTooLarge) or from_python_exception(exc):
        return False
    return exc.code not in (Code.DEADLINE_EXCEEDED, Code.CANCELED)


def describe_failure(exc: ConnectError) -> str:
    """A short, safe reason for headers and messages (no upstream internals)."""
    if exc.code == Code.DEADLINE_EXCEEDED:
        return "timed out"
    if exc.code == Code.UNAVAILABLE:
        return "unavailable"
    return exc.code.name.lower()

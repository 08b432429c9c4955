"""A receive() its caller may cancel, for the ASGI layers that wait on one with a timeout.

pyvoy's receive() returns a future that it later resolves without checking whether
it was cancelled; cancelling it (a first-message timeout, a reader task stopped)
made the server log InvalidStateError tracebacks. The Register front and the
receive guard both read through this wrapper.
"""

from __future__ import annotations

import asyncio

from starlette.types import Message, Receive

__all__ = ["CancelSafeReceive"]


class CancelSafeReceive:
    """A receive() its caller may cancel: the server's own receive() is left pending.

    A cancelled call leaves the server's future to finish on its own; the message
    it brings is the answer to the next call, so nothing the client sent is lost.
    """

    __slots__ = ("_pending", "_receive")

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._pending: asyncio.Future[Message] | None = None

    async def __call__(self) -> Message:
        pending = self._pending
        if pending is None:
            pending = self._pending = asyncio.ensure_future(self._receive())
        # shield: cancelling this call cancels only the shield's outer future (and
        # marks the server's result as retrieved if nobody asks for it again).
        try:
            return await asyncio.shield(pending)
        finally:
            if pending.done():
                self._pending = None

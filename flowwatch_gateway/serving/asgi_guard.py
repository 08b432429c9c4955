"""Keep connectrpc's disconnect watch from spinning on pyvoy's receive().

Once a request body is complete, connectrpc watches for a client disconnect by
calling receive() in a loop until it returns http.disconnect, and cancels that
watch when the handler ends. pyvoy 1.3 answers those calls with further empty
http.request messages, at times without suspending (seen with empty request
bodies over HTTP/2), so the loop spun and starved the event loop whenever a
handler awaited something: an empty-body ListRuns fanned out to subsystems hung
the whole gateway and every Register stream went stale. Cancelling the watch also
left pyvoy futures to be set after cancellation (InvalidStateError in the log).

This middleware reads past the body's end itself, in one task per request that
polls with backoff and is never cancelled: it ends when the server reports the
disconnect (every server does once the response is complete or the client has
gone) and then wakes the app's receive() calls, which wait on an event and may be
cancelled freely. Clients that leave are still noticed (within MAX_POLL_S), so
server streams stop when their client goes.

The watch starts FIRST_POLL_S after the app first waits, and not at all once the
response is complete (the app's receive() then says http.disconnect, as ASGI has
it): most unary calls answer before that, and a task plus a server receive() per
call was about 5 % of the gateway's CPU on a routed call (README, Performance).

A server's pending receive() is never cancelled either (`CancelSafeReceive`): pyvoy
hands out a plain future and resolves it later from its own thread without asking
whether it is still wanted, so a cancelled one (a timeout around reading a request,
a reader task cancelled when its stream ends) became an InvalidStateError traceback
in the log once the client went away, one per abandoned stream.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flowwatch_gateway.asgi_receive import CancelSafeReceive

FIRST_POLL_S = 0.01
MAX_POLL_S = 1.0

# Watch tasks hold a pending server receive() until the server ends the request;
# keeping references here stops them from being garbage collected meanwhile.
_WATCHERS: set[asyncio.Task[None]] = set()


class GuardReceiveAfterBody:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        read_body = CancelSafeReceive(receive)
        body_complete = False
        response_complete = False
        trailers = False  # the response ends with its trailers (gRPC), not its body
        disconnected = asyncio.Event()
        watcher: asyncio.Task[None] | None = None
        start_later: asyncio.TimerHandle | None = None

        async def wait_for_disconnect() -> None:
            delay = FIRST_POLL_S
            try:
                while not response_complete and (await receive())["type"] != "http.disconnect":
                    # pyvoy answers receive() after the body's end with more empty
                    # http.request messages, at times without suspending: re-asking at
                    # once would spin and starve the event loop. Poll with backoff.
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, MAX_POLL_S)
            finally:
                disconnected.set()

        def start_watcher() -> None:
            nonlocal watcher
            if response_complete or watcher is not None:
                return
            watcher = asyncio.ensure_future(wait_for_disconnect())
            _WATCHERS.add(watcher)
            watcher.add_done_callback(_WATCHERS.discard)

        async def guarded_receive() -> Message:
            nonlocal body_complete, start_later
            if not body_complete:
                message = await read_body()
                if message["type"] == "http.request" and not message.get("more_body", False):
                    body_complete = True
                return message
            if start_later is None and not response_complete:
                start_later = asyncio.get_running_loop().call_later(FIRST_POLL_S, start_watcher)
            await disconnected.wait()
            return {"type": "http.disconnect"}

        async def guarded_send(message: Message) -> None:
            nonlocal response_complete, trailers
            await send(message)
            kind = message["type"]
            if kind == "http.response.start":
                trailers = bool(message.get("trailers", False))
            elif (
                kind == "http.response.body" and not trailers and not message.get("more_body")
            ) or (kind == "http.response.trailers" and not message.get("more_trailers")):
                # The request is over for the app: its receive() says so from now on.
                response_complete = True
                if start_later is not None:
                    start_later.cancel()
                disconnected.set()

        await self.app(scope, guarded_receive, guarded_send)


def pending_watchers() -> int:
    """How many requests still wait for their server's disconnect (for tests/metrics)."""
    return len(_WATCHERS)

"""Keep handlers from reading past the end of a request body.

connectrpc watches for a client disconnect by calling receive() again once the
body is complete, and cancels that call when the handler finishes. Under pyvoy
1.3 a cancelled receive() whose message arrives later raises InvalidStateError
inside pyvoy's executor and, with other streams open on the same worker, wedged
request delivery for the whole gateway (measured: an empty-body ListRuns fanned
out to subsystems hung it and every Register stream went stale). This middleware
answers receive() calls after the body's end itself, without asking the server,
so no server-side receive is ever left pending and cancelled.

The cost: a unary handler is not told that its client went away; it still ends
at its own deadline (the upstream timeout bounds every proxied call).
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class StopReadingAfterBody:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_complete = False
        response_done = asyncio.Event()

        async def guarded_receive() -> Message:
            nonlocal body_complete
            if body_complete:
                # Nothing more will come but a disconnect; wait for the response instead.
                await response_done.wait()
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                body_complete = True
            return message

        try:
            await self.app(scope, guarded_receive, send)
        finally:
            response_done.set()

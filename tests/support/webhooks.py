"""A local HTTP site for a test, and the webhook receiver the event detectors notify.

Both listen on 127.0.0.1 on a free port and are gone when their ``async with`` ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from tests.support.waiting import wait_until


@contextlib.asynccontextmanager
async def local_site(app: web.Application) -> AsyncIterator[int]:
    """Serve ``app`` on 127.0.0.1; yields the port."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port: int = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield port
    finally:
        await runner.cleanup()


class WebhookReceiver:
    """Answers ``POST /hook`` with 200 and keeps every JSON body, in order of arrival."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.url = ""
        self._site: contextlib.AbstractAsyncContextManager[int] | None = None

    async def __aenter__(self) -> WebhookReceiver:
        async def hook(request: web.Request) -> web.Response:
            self.received.append(await request.json())
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_post("/hook", hook)
        self._site = local_site(app)
        port = await self._site.__aenter__()
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._site is not None
        await self._site.__aexit__(*exc)

    def notified(self) -> set[tuple[str, str]]:
        """(type, event id) of every notification so far: ("slowdown.opened", "1f...")."""
        return {(r["type"], r["event"]["event_id"]) for r in self.received}

    async def wait_for(self, kind: str, event_id: str, *, timeout: float) -> None:
        """Until the ``kind`` notification (``outage.closed``) of ``event_id`` came."""
        await wait_until(lambda: (kind, event_id) in self.notified(),
                         f"the {kind} notification of {event_id}", timeout=timeout,
                         detail=lambda: f"received {sorted(self.notified())}")

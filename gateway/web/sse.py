"""Server-sent events: one open ``text/event-stream`` response and what is written to it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..textsafe import visible_data

# A comment line at least this often, so that proxies keep the stream open.
HEARTBEAT_SECONDS = 10.0
POLL_SECONDS = 1.0  # how often a followed snapshot is looked at
STREAM_SECONDS = 30 * 60.0  # then a followed stream ends and the browser opens a new one


class EventStream:
    """Write ``send`` / ``heartbeat``; both raise ConnectionError once the browser has gone."""

    def __init__(self, request: web.Request, response: web.StreamResponse) -> None:
        self._request = request
        self.response = response
        self._last_write = time.monotonic()

    @classmethod
    async def open(cls, request: web.Request) -> EventStream:
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
        })
        await response.prepare(request)
        return cls(request, response)

    def open_for(self, shutting_down: asyncio.Event) -> bool:
        """Keep streaming: the app is not shutting down and the connection is still there."""
        transport = self._request.transport
        return not shutting_down.is_set() and transport is not None and not transport.is_closing()

    async def send(self, data: dict[str, Any], event: str | None = None) -> None:
        """One event; names, user agents and reasons in ``data`` show control characters
        visibly (the page puts them into the dashboard as they arrive)."""
        lines = f"event: {event}\n" if event else ""
        lines += f"data: {json.dumps(visible_data(data), separators=(',', ':'))}\n\n"
        await self._write(lines)

    async def heartbeat(self) -> None:
        """A comment line, if nothing was written for ``HEARTBEAT_SECONDS``."""
        if time.monotonic() - self._last_write >= HEARTBEAT_SECONDS:
            await self._write(": keep-alive\n\n")

    async def _write(self, text: str) -> None:
        await self.response.write(text.encode())
        self._last_write = time.monotonic()


async def follow(request: web.Request, event: str,
                 look: Callable[[], Awaitable[dict[str, Any]]],
                 shutting_down: asyncio.Event) -> web.StreamResponse:
    """A stream of ``look()``: at once, then again whenever it changed (looked at every
    ``POLL_SECONDS``; a heartbeat otherwise), as events named ``event``, until the browser
    leaves, the gateway shuts down or ``STREAM_SECONDS`` passed (the browser's EventSource then
    opens a new stream)."""
    stream = await EventStream.open(request)
    ends = time.monotonic() + STREAM_SECONDS
    last: dict[str, Any] | None = None
    try:
        while True:
            data = await look()
            if data != last:
                await stream.send(data, event=event)
                last = data
            else:
                await stream.heartbeat()
            if not stream.open_for(shutting_down) or time.monotonic() >= ends:
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_SECONDS):
                    await shutting_down.wait()
    except ConnectionError:
        pass  # the admin closed the page
    return stream.response

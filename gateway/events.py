"""Event bus: in-process publish/subscribe for what the admin dashboard shows live.

Subscribers get their own bounded queue; a slow subscriber loses events rather than holding
anyone up (the dashboard also receives full snapshots, so it catches up by itself).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

QUEUE_LIMIT = 256


class EventBus:
    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[dict[str, Any]]] = set()

    def publish(self, kind: str, **data: Any) -> None:
        event = {"type": kind, **data}
        for queue in self._queues:
            if queue.qsize() < QUEUE_LIMIT:
                queue.put_nowait(event)

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._queues.add(queue)
        try:
            yield queue
        finally:
            self._queues.discard(queue)

    def __len__(self) -> int:
        return len(self._queues)

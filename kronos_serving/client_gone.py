"""Stop working for callers who left: await a forecast within the request timeout, and cancel it
(its rows leave the engine at the next step) as soon as the HTTP client disconnects."""
from __future__ import annotations

import asyncio
from typing import Any, Awaitable

from starlette.requests import Request

POLL_S = 0.5


class ClientGone(Exception):
    """The HTTP client disconnected before its answer was ready."""


async def while_connected(work: Awaitable[Any], request: Request, timeout_s: float,
                          poll_s: float = POLL_S) -> Any:
    """``work``'s result; ``TimeoutError`` past ``timeout_s``, ``ClientGone`` if the client left.
    Either way ``work`` is cancelled."""
    task = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    try:
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError
            done, _ = await asyncio.wait({task}, timeout=min(poll_s, remaining))
            if done:
                return task.result()
            if await request.is_disconnected():
                raise ClientGone
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

"""Waiting on a dependency for a bounded time, without then waiting on its cancellation."""

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")

_abandoned: set[asyncio.Future[object]] = set()  # (the loop keeps only weak references to tasks)


async def within(command: Awaitable[T], seconds: float, what: str) -> T:
    """``command``'s answer, or :class:`TimeoutError` (naming ``what``) after ``seconds``.

    On time-out the command is cancelled but not waited for: redis-py can swallow a cancellation that lands inside a
    command (``queue.Waker.close``), and a connection attempt to a host that drops packets ends only at its own
    timeout, so ``asyncio.wait_for`` would wait those out after all. The abandoned task is kept until it ends.
    """
    task = asyncio.ensure_future(command)
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
    except asyncio.CancelledError:
        _abandon(task)
        raise
    if not done:
        _abandon(task)
        raise TimeoutError(f"{what} did not answer within {seconds} s")
    return task.result()


def _abandon(task: asyncio.Future[object]) -> None:
    task.cancel()
    _abandoned.add(task)
    task.add_done_callback(_abandoned.discard)
    task.add_done_callback(lambda t: t.cancelled() or t.exception())  # (its error is the caller's to report)

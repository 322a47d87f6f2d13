"""Group commit for the tracking API: concurrent requests share one transaction.

Every tracking request must be committed before it is answered, and on a small machine the commit
(a WAL flush) costs more than the rows. The committer queues each request's validated messages; a
writer takes everything queued (up to ``max_events``), writes it in one transaction — one
``tracking.record`` per workspace, so dedup and identity resolution see the whole group — commits,
and answers every request with its own counts. While a transaction is in flight new requests queue,
so batches grow with load and a lone request waits for nobody.

If a group's transaction fails, each request is retried in a transaction of its own, so one bad
request cannot fail the others.
"""

import asyncio
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.ingest import tracking

log = structlog.get_logger()


@dataclass
class _Submission:
    workspace_id: uuid.UUID
    envelopes: list[tracking.Envelope]
    received_at: datetime
    future: asyncio.Future[tracking.RecordResult] = field(repr=False)


class Committer:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], *, writers: int = 2, max_events: int = 5000):
        self._sessionmaker = sessionmaker
        self._queue: asyncio.Queue[_Submission] = asyncio.Queue()
        self._max_events = max_events
        self._writers = [asyncio.create_task(self._run(), name=f"ingest-committer-{i}") for i in range(writers)]

    async def submit(self, ws: uuid.UUID, envelopes: list[tracking.Envelope], received_at: datetime
                     ) -> tracking.RecordResult:
        future: asyncio.Future[tracking.RecordResult] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Submission(ws, envelopes, received_at, future))
        return await future

    async def close(self) -> None:
        """Finish what is queued, then stop (called on shutdown, after the server stopped accepting)."""
        await self._queue.join()
        for w in self._writers:
            w.cancel()
        await asyncio.gather(*self._writers, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            group = [await self._queue.get()]
            size = len(group[0].envelopes)
            while size < self._max_events and not self._queue.empty():
                nxt = self._queue.get_nowait()
                group.append(nxt)
                size += len(nxt.envelopes)
            try:
                await self._write(group)
            except Exception as exc:  # noqa: BLE001 - a writer that died would leave every later request waiting
                for sub in group:
                    _settle(sub, exc)
                log.exception("ingest.committer_failed", requests=len(group))
            finally:
                for _ in group:
                    self._queue.task_done()

    async def _write(self, group: list[_Submission]) -> None:
        try:
            results = await self._record(group)
        except Exception as exc:  # noqa: BLE001 - isolate: each request on its own
            if len(group) == 1:
                _settle(group[0], exc)
                return
            log.warning("ingest.group_commit_failed", requests=len(group), error=type(exc).__name__)
            for sub in group:
                await self._write([sub])
            return
        for sub, result in zip(group, results, strict=True):
            _settle(sub, result)


    async def _record(self, group: list[_Submission], races: int = 3) -> list[tracking.RecordResult]:
        for attempt in range(1, races + 1):
            try:
                async with self._sessionmaker() as session, session.begin():
                    return await _record_group(session, group)
            except tracking.MessageIdRace:
                if attempt == races:
                    raise
                log.info("ingest.message_id_race", requests=len(group), attempt=attempt)
        raise AssertionError("unreachable")


def _settle(sub: _Submission, outcome: tracking.RecordResult | BaseException) -> None:
    if sub.future.done():
        return
    if isinstance(outcome, BaseException):
        sub.future.set_exception(outcome)
    else:
        sub.future.set_result(outcome)


async def _record_group(session: AsyncSession, group: list[_Submission]) -> list[tracking.RecordResult]:
    """One ``record`` per workspace over the group's messages; each request gets its own counts."""
    by_ws: dict[uuid.UUID, list[_Submission]] = defaultdict(list)
    for sub in group:
        by_ws[sub.workspace_id].append(sub)
    results: dict[int, tracking.RecordResult] = {}
    # in workspace order: each ``record`` takes its workspace's erasure lock (shared) to commit, and two groups
    # taking two workspaces' locks in opposite orders could deadlock with two erasures waiting for them
    for ws, subs in sorted(by_ws.items(), key=lambda item: item[0]):
        combined = await tracking.record(session, ws, [e for s in subs for e in s.envelopes], subs[0].received_at)
        inserted = {e.message_id for e in combined.inserted}
        claimed: set[str] = set()
        for sub in subs:
            r = tracking.RecordResult()
            for env in sub.envelopes:
                if env.message_id in combined.suppressed_ids:
                    r.suppressed += 1
                elif env.message_id in inserted and env.message_id not in claimed:
                    claimed.add(env.message_id)
                    r.accepted += 1
                    r.inserted.append(env)
                else:
                    r.duplicates += 1
            results[id(sub)] = r
    return [results[id(s)] for s in group]

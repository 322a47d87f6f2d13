"""Group commit for the tracking API: concurrent requests share one transaction.

Every tracking request must be committed before it is answered, and on a small machine the commit
(a WAL flush) costs more than the rows. The committer queues each request's validated messages; a
writer takes everything queued (up to ``max_events``), writes it in one transaction — one
``tracking.record`` per workspace, so dedup and identity resolution see the whole group — commits,
and answers every request with its own counts. While a transaction is in flight new requests queue,
so batches grow with load and a lone request waits for nobody.

If a group's transaction fails, each request is retried in a transaction of its own, so one bad
request cannot fail the others. A request the database refuses for its data (a value it cannot hold, a key
it already has: a bug of ours that some message triggers) is written again in halves, each in a savepoint of
one transaction, down to the messages at fault: those are refused, the rest of the request is stored, instead
of a 500 that lost every message of the batch, answered again to every retry of the SDK.
"""

import asyncio
import uuid
from collections import defaultdict
from dataclasses import dataclass, field

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.ingest import tracking
from shared.db import sqlstate

log = structlog.get_logger()

# transactions one request may spend finding its messages at fault: about two per halving (log2 of 2,500 messages
# is 12) for each of a few bad messages; past it the request fails as a whole
ISOLATION_BUDGET = 48


@dataclass
class _Submission:
    workspace_id: uuid.UUID
    envelopes: list[tracking.Envelope]  # each dated with its request's receipt (``received_at``)
    future: asyncio.Future[tracking.RecordResult] = field(repr=False)


class Committer:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], *, writers: int = 2, max_events: int = 5000):
        self._sessionmaker = sessionmaker
        self._queue: asyncio.Queue[_Submission] = asyncio.Queue()
        self._max_events = max_events
        self._writers = [asyncio.create_task(self._run(), name=f"ingest-committer-{i}") for i in range(writers)]

    async def submit(self, ws: uuid.UUID, envelopes: list[tracking.Envelope]) -> tracking.RecordResult:
        future: asyncio.Future[tracking.RecordResult] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Submission(ws, envelopes, future))
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
                sub = group[0]
                outcome: tracking.RecordResult | BaseException
                try:
                    outcome = await self._isolate(sub.workspace_id, sub.envelopes, exc)
                except Exception as failed:  # noqa: BLE001 - the request's own answer
                    outcome = failed
                _settle(sub, outcome)
                return
            log.warning("ingest.group_commit_failed", requests=len(group), error=type(exc).__name__)
            for sub in group:
                await self._write([sub])
            return
        for sub, result in zip(group, results, strict=True):
            _settle(sub, result)

    async def _isolate(self, ws: uuid.UUID, envelopes: list[tracking.Envelope], exc: Exception
                       ) -> tracking.RecordResult:
        """One request's messages after its transaction failed with ``exc``: written again in one transaction, in
        halves (in order, each in a savepoint) while the database refuses them for their data, the messages it
        refuses alone reported in ``refused``. Raises the error, with nothing of the request stored, when it is not
        about the data, when no message of the request could be written (then the fault is more likely ours than
        the messages': the client should retry), or when the budget runs out. (Halves committed one by one left
        part of a request stored under a 500, and a retry stored again the messages the SDK gave no messageId.)"""
        if not refused_for_its_data(exc):
            raise exc
        budget = [ISOLATION_BUDGET]
        async with self._sessionmaker() as session, session.begin():
            result = await self._halves(session, ws, envelopes, exc, budget)
            if len(result.refused) == len(envelopes):
                raise exc
        return result

    async def _halves(self, session: AsyncSession, ws: uuid.UUID, envelopes: list[tracking.Envelope],
                      exc: Exception, budget: list[int]) -> tracking.RecordResult:
        if not refused_for_its_data(exc) or (len(envelopes) > 1 and budget[0] <= 0):
            raise exc
        if len(envelopes) == 1:
            env = envelopes[0]
            # ids and the database's first line only (its other lines hold the statement and the values)
            log.error("ingest.message_refused_by_database", workspace_id=str(ws), message_id=env.message_id[:100],
                      sqlstate=sqlstate(exc), error=(str(exc).strip().splitlines() or [""])[0][:300])
            return tracking.RecordResult(refused=[(env, sqlstate(exc) or "")])
        half = len(envelopes) // 2
        out = tracking.RecordResult()
        for part in (envelopes[:half], envelopes[half:]):
            budget[0] -= 1
            try:
                async with session.begin_nested():
                    [got] = await _record_group(
                        session, [_Submission(ws, part, asyncio.get_running_loop().create_future())])
            except Exception as failed:  # noqa: BLE001 - narrowed down, or raised again
                got = await self._halves(session, ws, part, failed, budget)
            out.accepted += got.accepted
            out.duplicates += got.duplicates
            out.suppressed += got.suppressed
            out.inserted += got.inserted
            out.refused += got.refused
        return out

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


def refused_for_its_data(exc: Exception) -> bool:
    """A data exception (SQLSTATE class 22), a constraint violation (23) or a value too large for an index (54000,
    program_limit_exceeded: a long text in an indexed column or expression): it follows the messages."""
    state = sqlstate(exc)
    return isinstance(state, str) and (state[:2] in ("22", "23") or state == "54000")


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
        # (each envelope carries its own request's received_at: the group's first, shared, stored events with a
        # timestamp after their received_at)
        combined = await tracking.record(session, ws, [e for s in subs for e in s.envelopes])
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

"""The event log never skips or reorders a committed event, even when transactions commit out of order."""

import asyncio
import random
import uuid
from datetime import UTC, datetime

from services.ingest import eventlog, tracking
from shared.feed import Cursor
from shared.testing import FEED_SETTLE_S

WRITERS = 24
PER_WRITER = 5


async def test_concurrent_writers_consumer_sees_each_event_exactly_once(sessionmaker, workspace) -> None:
    ws = workspace.workspace_id
    expected: set[str] = set()
    done = asyncio.Event()

    async def writer(w: int) -> None:
        for i in range(PER_WRITER):
            mid = f"w{w}-{i}-{uuid.uuid4().hex[:6]}"
            env = tracking.Envelope(message_id=mid, type="track", event="E", user_id=f"user-{w}", anonymous_id=None,
                                    properties={}, traits={}, context={}, timestamp=datetime.now(UTC), sent_at=None)
            async with sessionmaker() as s, s.begin():
                await tracking.record(s, ws, [env], datetime.now(UTC))
                # hold the transaction open for a random while: later seqs commit first
                await asyncio.sleep(random.uniform(0, 0.05))
            expected.add(mid)

    seen: list[str] = []
    cursors: list[Cursor] = []

    async def reader() -> None:
        cursor = Cursor()
        settle_deadline: float | None = None
        while True:
            writers_done = done.is_set()  # read before the page: an empty page after this holds every event...
            async with sessionmaker() as s, s.begin():
                events, cursor = await eventlog.read_feed(s, cursor, 7)
            cursors.append(cursor)
            seen.extend(e["message_id"] for e in events if e["workspace_id"] == str(ws))
            if not events and writers_done:
                # ...that the horizon lets through: another session's open transaction on a shared server (another
                # test worker's) holds committed events back, and is waited out, as a consumer would, up to a bound
                now = asyncio.get_running_loop().time()
                settle_deadline = settle_deadline or now + FEED_SETTLE_S
                if expected <= set(seen) or now > settle_deadline:
                    return
            if not events:
                await asyncio.sleep(0.005)

    reading = asyncio.create_task(reader())
    await asyncio.gather(*(writer(w) for w in range(WRITERS)))
    done.set()
    await asyncio.wait_for(reading, 60 + FEED_SETTLE_S)
    assert len(seen) == len(set(seen)), "an event was delivered twice"
    assert set(seen) == expected, f"missing: {expected - set(seen)}"
    assert cursors == sorted(cursors), "the cursor went backwards"


async def test_feed_orders_transaction_ids_as_numbers_not_text(sessionmaker, workspace) -> None:
    """Regression: the cursor column was once selected as text under the name ``xid``, and ``ORDER BY xid``
    then sorted "10" before "9" — the feed reordered (and re-sent) events whenever xids gained a digit."""
    from sqlalchemy import text

    async with sessionmaker() as s, s.begin():
        for xid, mid in (("10", "ten"), ("9", "nine"), ("100", "hundred")):
            await s.execute(text(
                "insert into ingest.events (xid, workspace_id, message_id, type, event, profile_id, timestamp) "
                "values (CAST(CAST(:x AS text) AS xid8), :ws, :mid, 'track', 'E', gen_random_uuid(), now())"),
                {"x": xid, "ws": workspace.workspace_id, "mid": mid})
    async with sessionmaker() as s, s.begin():
        events, cursor = await eventlog.read_feed(s, Cursor(8, 0), 2)
        assert [e["message_id"] for e in events] == ["nine", "ten"]
        events, _ = await eventlog.read_feed(s, cursor, 2)
        assert [e["message_id"] for e in events][:1] == ["hundred"]


async def test_a_page_says_how_far_behind_its_reader_is(apps, sessionmaker, workspace) -> None:
    """`behind` is the consumer lag behind every feed: exact for small lags, estimated (never below the
    truth) from the sequence for large ones."""
    from shared.feed import backlog
    from shared.testing import feed_head, internal_headers

    feed = apps["ingest"]
    head = await feed_head(feed)  # past whatever earlier tests wrote
    page = (await feed.get("/v1/events", params={"after": head}, headers=internal_headers())).json()
    assert page["events"] == [] and page["behind"] == 0
    ws = workspace.workspace_id
    async with sessionmaker() as s, s.begin():
        now = datetime.now(UTC)
        await tracking.record(s, ws, [
            tracking.Envelope(message_id=f"lag-{i}", type="track", event="E", user_id="lagging", anonymous_id=None,
                              properties={}, traits={}, context={}, timestamp=now, sent_at=None) for i in range(30)],
            now)
    # (committed events wait behind other sessions' open transactions on a shared server: waited out, as readers do)
    deadline = asyncio.get_running_loop().time() + FEED_SETTLE_S
    while True:
        page = (await feed.get("/v1/events", params={"after": head, "limit": 10}, headers=internal_headers())).json()
        if len(page["events"]) == 10 or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.05)
    assert len(page["events"]) == 10 and page["behind"] == 20
    async with sessionmaker() as s, s.begin():
        assert await backlog(s, "ingest.events", Cursor.decode(page["next_cursor"]), exact_up_to=5) >= 20
        assert await backlog(s, "ingest.events", Cursor.decode(head)) == 30

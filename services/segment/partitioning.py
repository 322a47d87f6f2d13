"""Sharing re-evaluation between segment worker replicas: profiles are split into partitions by a hash
of their id, and each partition is processed by one replica at a time.

Folding the event feed stays one ordered consumer (cheap SQL, and one cursor keeps "a page and its
effects commit together"). What it folds marks the touched profiles dirty in the same transaction;
re-evaluation — loading facts and evaluating every segment, the expensive part — takes dirty profiles
partition by partition. A replica takes a partition with a transaction-scoped ``pg_try_advisory_xact_lock``,
so a second replica skips it instead of waiting, and the dirty rows are deleted in the transaction
that writes their new memberships: a crash leaves them dirty, and they are simply evaluated again.

Rows carry a fixed ``slot`` (0..1023) and partition ``p`` of ``N`` covers the slots with
``slot % N == p``, so changing ``TENURE_SEGMENT_PARTITIONS`` never strands a row (every replica must
use the same N). Evaluation itself locks per (workspace, slot stripe), so two evaluators — a replica
and a backfill, say — never write the same profile's memberships at once.
"""

import hashlib
import random
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.metrics import workspace_failed

SLOTS = 1024
LOCK_STRIPES = 16


def slot_of(profile_id: uuid.UUID) -> int:
    return int.from_bytes(hashlib.blake2b(profile_id.bytes, digest_size=4).digest(), "big") % SLOTS


def stripe_of(profile_id: uuid.UUID) -> int:
    """The evaluation lock stripe a profile belongs to."""
    return slot_of(profile_id) % LOCK_STRIPES


def stripes_of(profile_ids: Iterable[uuid.UUID]) -> list[int]:
    return sorted({stripe_of(p) for p in profile_ids})


async def mark_dirty(session: AsyncSession, affected: dict[uuid.UUID, set[uuid.UUID]]) -> int:
    rows = sorted((ws, pid) for ws, pids in affected.items() for pid in pids)
    if not rows:
        return 0
    await session.execute(
        text("insert into segment.dirty_profiles (workspace_id, profile_id, partition) "
             "select * from unnest(CAST(:ws AS uuid[]), CAST(:pid AS uuid[]), CAST(:slot AS int[])) "
             "on conflict do nothing"),
        {"ws": [r[0] for r in rows], "pid": [r[1] for r in rows], "slot": [slot_of(r[1]) for r in rows]},
    )
    return len(rows)


async def take_partition(session: AsyncSession, partition: int, partitions: int, limit: int
                         ) -> dict[uuid.UUID, list[uuid.UUID]] | None:
    """Inside the caller's transaction: lock the partition (None if another replica holds it) and take up
    to ``limit`` of its dirty profiles, oldest first, by workspace."""
    locked = (await session.execute(text("select pg_try_advisory_xact_lock(hashtextextended(:k, 0))"),
                                    {"k": f"segment-partition:{partitions}:{partition}"})).scalar()
    if not locked:
        return None
    rows = await session.execute(
        text("delete from segment.dirty_profiles d where (d.workspace_id, d.profile_id) in ("
             "  select workspace_id, profile_id from segment.dirty_profiles where partition % :n = :p "
             "  order by marked_at limit :lim for update skip locked) "
             "returning d.workspace_id, d.profile_id"),
        {"n": partitions, "p": partition, "lim": limit},
    )
    out: dict[uuid.UUID, list[uuid.UUID]] = defaultdict(list)
    for ws, pid in rows:
        out[ws].append(pid)
    return out


Evaluate = Callable[[AsyncSession, uuid.UUID, list[uuid.UUID]], Awaitable[int]]


async def process_dirty(sessionmaker: async_sessionmaker[AsyncSession], partitions: int, limit: int,
                        evaluate: Evaluate) -> tuple[int, int]:
    """Re-evaluate dirty profiles with ``evaluate`` (evaluation.reevaluate), partition by partition
    (starting at a random one, so replicas spread), skipping partitions another replica holds. A workspace
    whose evaluation fails is rolled back to a savepoint and its profiles marked dirty again, so the other
    workspaces' changes still commit. Returns (profiles evaluated, transitions written)."""
    profiles = transitions = 0
    start = random.randrange(partitions)
    async with sessionmaker() as session:
        for i in range(partitions):
            partition = (start + i) % partitions
            while True:
                failed = False
                async with session.begin():
                    taken = await take_partition(session, partition, partitions, limit)
                    if taken is None:
                        break
                    for ws, pids in sorted(taken.items()):
                        try:
                            async with session.begin_nested():
                                transitions += await evaluate(session, ws, pids)
                        except Exception:  # noqa: BLE001 - this workspace's profiles stay dirty, the others go on
                            workspace_failed("segment", "reevaluate", ws)
                            await mark_dirty(session, {ws: set(pids)})
                            failed = True
                n = sum(len(p) for p in taken.values())
                profiles += n
                if n < limit or failed:  # (the failed rows are dirty again: the next run retries them)
                    break
    return profiles, transitions

"""Re-evaluation shared by replicas: dirty profiles are processed partition by partition, a partition
held by one replica is skipped by another, and concurrent replicas evaluate every profile exactly once."""

import asyncio
import uuid
from datetime import UTC, datetime

from sqlalchemy import text

from services.segment import evaluation, partitioning, segments

N = 4


async def _setup(sessionmaker, ws, count: int) -> tuple[str, list[uuid.UUID]]:
    # earlier tests may have left dirty profiles in this database: drain them, so counts here are ours
    while (await partitioning.process_dirty(sessionmaker, N, 1000, evaluation.reevaluate))[0]:
        pass
    pids = [uuid.uuid4() for _ in range(count)]
    async with sessionmaker() as s, s.begin():
        seg = await segments.create_segment(s, ws, "viewers", {"type": "performed", "event": "Viewed"})
        affected = await evaluation.apply_events(s, [
            {"workspace_id": str(ws), "profile_id": str(p), "type": "track", "event": "Viewed",
             "message_id": str(p), "properties": {}, "traits": {}, "timestamp": datetime.now(UTC).isoformat()}
            for p in pids])
        await partitioning.mark_dirty(s, affected)
    return str(seg["id"]), pids


async def _entries(sessionmaker, seg_id: str) -> list[str]:
    async with sessionmaker() as s:
        return [str(r) for r in (await s.execute(text(
            "select profile_id from segment.transitions where segment_id = :s and kind = 'entered'"),
            {"s": seg_id})).scalars()]


async def _dirty(sessionmaker, ws) -> set[uuid.UUID]:
    async with sessionmaker() as s:
        return set((await s.execute(text("select profile_id from segment.dirty_profiles where workspace_id = :ws"),
                                    {"ws": ws})).scalars())


async def test_a_partition_held_by_another_replica_is_skipped(workspace, sessionmaker) -> None:
    ws = workspace.workspace_id
    seg_id, pids = await _setup(sessionmaker, ws, 120)
    held = {p for p in pids if partitioning.slot_of(p) % N == 2}
    assert held and held != set(pids)
    async with sessionmaker() as other, other.begin():  # another replica is inside partition 2
        await other.execute(text("select pg_advisory_xact_lock(hashtextextended(:k, 0))"),
                            {"k": f"segment-partition:{N}:2"})
        done, _ = await partitioning.process_dirty(sessionmaker, N, 50, evaluation.reevaluate)
        assert done == len(pids) - len(held)
        assert await _dirty(sessionmaker, ws) == held
    done, _ = await partitioning.process_dirty(sessionmaker, N, 50, evaluation.reevaluate)
    assert done == len(held) and await _dirty(sessionmaker, ws) == set()
    assert sorted(await _entries(sessionmaker, seg_id)) == sorted(str(p) for p in pids)


async def test_concurrent_replicas_evaluate_each_profile_once(workspace, sessionmaker) -> None:
    ws = workspace.workspace_id
    seg_id, pids = await _setup(sessionmaker, ws, 300)
    results = await asyncio.gather(*(partitioning.process_dirty(sessionmaker, N, 20, evaluation.reevaluate)
                                     for _ in range(3)))
    # replicas that found a partition busy skip it; whatever is left, one more pass takes
    results.append(await partitioning.process_dirty(sessionmaker, N, 20, evaluation.reevaluate))
    assert sum(done for done, _ in results) == len(pids)
    assert sum(changed for _, changed in results) == 2 * len(pids)  # the segment, and a first lifecycle stage
    entries = await _entries(sessionmaker, seg_id)
    assert len(entries) == len(set(entries)) == len(pids)

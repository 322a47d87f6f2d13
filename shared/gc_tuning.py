"""Garbage-collector settings for long-running processes (the APIs and the workers)."""

import gc

# young collections after this many net container allocations (CPython's default is 700)
YOUNG_THRESHOLD = 20_000
_tuned = False


def tune_gc() -> None:
    """Freeze what start-up allocated and run the cycle collector less often.

    With the defaults, a young collection ran every 700 net allocations; a tracking request's payload
    (dicts, models, envelopes) lives for the whole request and so survived several of them into the
    older generations, and each older collection walked the hundreds of thousands of objects the
    imports left behind (SQLAlchemy, FastAPI, pydantic). Under ``bench/ingest.py`` the collector took
    2.2 s of the ingest server's 8.4 s of CPU per 100k events; after freezing the start-up heap and
    raising the threshold, 0.1–0.3 s. Reference cycles are still collected, only in larger steps.
    Once per process (a test process starts many apps).
    """
    global _tuned
    if _tuned:
        return
    _tuned = True
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, 10, 10)

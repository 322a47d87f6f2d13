"""Passes over every profile get hours, not the default two minutes (which cut a large workspace's
backfill off and restarted it at every poll)."""

from services.segment import worker as segment_worker
from shared.queue import JOB_TIMEOUT_S, worker_options
from shared.settings import Settings


def _options() -> dict:
    return worker_options(Settings(), "segment", **segment_worker._OPTIONS)


def test_passes_over_every_profile_have_the_long_timeout_as_jobs_polls_and_crons() -> None:
    opts = _options()
    functions = {f.name: f.timeout_s for f in opts["functions"]}
    assert functions["evaluate_segments"] == functions["recheck_windows"] == segment_worker.PASS_TIMEOUT_S
    assert functions["on_events"] == JOB_TIMEOUT_S
    crons = {c.name.rsplit(":", 1)[-1]: c.timeout_s for c in opts["cron_jobs"]}
    assert crons["evaluate_segments"] == crons["recheck_windows"] == segment_worker.PASS_TIMEOUT_S
    assert crons["on_events"] == JOB_TIMEOUT_S

"""The suite's watchdog (shared.testing.watchdog): a hung test fails with the stacks of what waits, and the run goes
on; checked in a pytest run of its own, as CI would meet it."""

import pytest

HUNG = '''
import asyncio
import threading

import pytest_asyncio


@pytest_asyncio.fixture
async def stuck():
    await asyncio.Event().wait()
    yield


async def test_set_up_hangs(stuck):
    pass


async def test_waits_for_a_future_nobody_settles():
    await asyncio.get_running_loop().create_future()


async def test_after_it_the_loop_still_runs():
    await asyncio.sleep(0.01)


def test_sync_code_blocked_on_a_lock():
    lock = threading.Lock()
    lock.acquire()
    lock.acquire()


def test_quick():
    assert True
'''


def test_a_hung_test_fails_with_stacks_and_the_run_goes_on(pytester: pytest.Pytester,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makeconftest('pytest_plugins = ["shared.testing.watchdog"]')
    pytester.makeini("[pytest]\nasyncio_mode = auto\nasyncio_default_test_loop_scope = session\n")
    pytester.makepyfile(test_hung=HUNG)
    monkeypatch.setenv("TENURE_TEST_HANG_AFTER_S", "1")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=60)
    result.assert_outcomes(passed=2, failed=2, errors=1)
    out = result.stdout.str() + result.stderr.str()
    assert "test_waits_for_a_future_nobody_settles still running after 1 s" in out
    assert "test_sync_code_blocked_on_a_lock still running after 1 s" in out
    assert "asyncio task" in out and "create_future" in out  # the task's own stack, where it waits
    assert "lock.acquire()" in out
    assert "test_set_up_hangs still running after 1 s" in out

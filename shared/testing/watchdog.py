"""pytest plugin: a test that hangs fails with a report of where everything waits, instead of holding the run.

CI gives the whole suite a fixed time; one test waiting forever (a future nobody settles, a lock nobody releases)
would use it all up and say nothing about where. After ``TENURE_TEST_HANG_AFTER_S`` (300 s; no test comes near)
the running test is interrupted: the stacks of every thread and of every asyncio task are written to the terminal,
then an async test's task is cancelled (its loop goes on for the tests after it) or a sync test gets ``Failed``
raised where it waits. ``0`` turns the watchdog off (a debugger session).
"""

import asyncio
import contextlib
import faulthandler
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

_SIGNAL = signal.SIGUSR2
_current: dict[str, Any] = {}
_watcher: list[threading.Thread] = []


def _hang_after_s() -> float:
    return float(os.environ.get("TENURE_TEST_HANG_AFTER_S", "300"))


def _report(item: pytest.Item, after_s: float) -> asyncio.Task[Any] | None:
    """Write every thread's and task's stack to the real terminal; the hung test's own task, if it is async."""
    capman = item.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
        err = sys.stderr
        err.write(f"\n\n=== {item.nodeid} still running after {after_s:.0f} s: where everything waits ===\n")
        err.flush()
        faulthandler.dump_traceback(file=err, all_threads=True)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        test_task = None
        for task in asyncio.all_tasks(loop):
            err.write(f"\n--- asyncio task {task.get_name()}: {task.get_coro()!r}\n")
            task.print_stack(limit=40, file=err)
            if _run_by_pytest(task, item):
                test_task = task
        err.flush()
        return test_task


def _run_by_pytest(task: asyncio.Task[Any], item: pytest.Item) -> bool:
    """Whether ``task`` is what pytest-asyncio's ``run_until_complete`` waits for (the test, or an async fixture
    being set up or torn down), else at least the test's own coroutine."""
    callbacks = getattr(task, "_callbacks", None) or ()  # (private, but only read, for a report)
    if any(getattr(cb, "__name__", "") == "_run_until_complete_cb" for cb, *_ in callbacks):
        return True
    code = getattr(task.get_coro(), "cr_code", None)
    return code is not None and code.co_name == getattr(item, "originalname", item.name)


def _on_signal(signum: int, frame: Any) -> None:
    item, after_s = _current.get("item"), _current.get("after_s", 0.0)
    if item is None:
        return
    task = _report(item, after_s)
    if task is not None:
        # wake the loop (it may sit in select() with nothing scheduled) and cancel the test where it waits
        task.get_loop().call_soon_threadsafe(task.cancel)
        return
    pytest.fail(f"still running after {after_s:.0f} s (stacks above)", pytrace=True)


def _watch(main: int) -> None:
    """One thread for the whole run: it looks at the running test's deadline every half second (a timer thread per
    test cost ~20 ms a test, thread start-up waiting on the GIL: 5 s over 226 quick tests)."""
    while True:
        time.sleep(0.5)
        deadline, test = _current.get("deadline"), _current.get("item")
        if test is not None and deadline is not None and time.monotonic() > deadline and not _current.get("fired"):
            _current["fired"] = True
            signal.pthread_kill(main, _SIGNAL)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    after_s = _hang_after_s()
    if after_s <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return
    if not _watcher:
        signal.signal(_SIGNAL, _on_signal)
        main = threading.main_thread().ident
        assert main is not None
        _watcher.append(threading.Thread(target=_watch, args=(main,), name="test-watchdog", daemon=True))
        _watcher[0].start()
    _current.update(item=item, after_s=after_s, deadline=time.monotonic() + after_s, fired=False)
    try:
        yield
    finally:
        _current.clear()

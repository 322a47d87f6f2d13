from collections.abc import Iterator

import pytest

pytest_plugins = ["shared.testing", "shared.testing.watchdog", "pytester"]


@pytest.fixture(scope="session", autouse=True)
def _stack_logs_in_the_run_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Real processes' logs (tests/e2e/stack.py) go to this run's pytest folder, which pytest removes a few runs on."""
    from tests.e2e import stack

    stack.LOG_ROOT = tmp_path_factory.mktemp("stack-logs")
    yield
    stack.LOG_ROOT = None

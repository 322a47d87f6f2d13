from collections.abc import Iterator

import pytest

pytest_plugins = ["shared.testing", "shared.testing.watchdog", "pytester"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Groups for pytest-xdist's ``--dist loadgroup`` (``make test``): a file's tests run on one worker, so its
    module fixtures are set up once, and every e2e file on the same one: two stacks of service processes at once
    would compete for PostgreSQL's connections (and each other's timeouts) on two cores."""
    for item in items:
        path = item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group("e2e" if path.startswith("tests/e2e/") else path))


@pytest.fixture(scope="session", autouse=True)
def _stack_logs_in_the_run_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Real processes' logs (tests/e2e/stack.py) go to this run's pytest folder, which pytest removes a few runs on."""
    from tests.e2e import stack

    stack.LOG_ROOT = tmp_path_factory.mktemp("stack-logs")
    yield
    stack.LOG_ROOT = None

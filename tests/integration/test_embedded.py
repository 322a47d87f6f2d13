"""The embedded PostgreSQL and Redis (`tenure dev` and the test suite without servers given) do not outlive
the processes using them, even one killed without a chance to clean up."""

import subprocess
import sys
import time
from pathlib import Path

import psutil

from shared.embedded import EmbeddedServers

START = """
import sys, time
from pathlib import Path
from shared.embedded import EmbeddedServers
EmbeddedServers(sys.argv[1]).start()
(Path(sys.argv[1]) / "up").touch()
time.sleep(600)
"""


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _stops(pid: int, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while _running(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _postmaster(state: Path) -> int:
    return int((state / "pgdata" / "postmaster.pid").read_text().split()[0])


def test_servers_of_a_killed_process_do_not_run_on(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", START, str(tmp_path)])
    postmaster, redis = 0, []
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "up").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "embedded servers did not start"
            time.sleep(0.1)
        postmaster = _postmaster(tmp_path)
        redis = [c.pid for c in psutil.Process(proc.pid).children() if c.name() == "redis-server"]
        assert len(redis) == 1
        proc.kill()  # kill -9: no clean-up of its own runs
        proc.wait()
        assert _stops(redis[0]), "redis outlived the process that started it"
        # pgserver keeps PostgreSQL for whoever uses the same data next; that one must still stop it
        with EmbeddedServers(tmp_path, redis=False):
            assert _postmaster(tmp_path) == postmaster
        assert _stops(postmaster), "PostgreSQL still runs after the last process using it stopped"
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in (postmaster, *redis):
            if pid and _running(pid):
                psutil.Process(pid).terminate()


def test_a_commands_json_answer_is_alone_on_stdout_with_the_embedded_database(tmp_path: Path) -> None:
    """With no TENURE_DATABASE_URL, `tenure workspace create --json` starts the embedded PostgreSQL: its log line
    went to stdout before the JSON, so a script reading the answer could not parse it."""
    import json
    import os

    tenure = str(Path(sys.executable).parent / "tenure")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENURE_")}
    env["TENURE_STATE_DIR"] = str(tmp_path / "state")
    out = subprocess.run([tenure, "workspace", "create", "scripted", "--json"], env=env, capture_output=True,
                         text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    created = json.loads(out.stdout)
    assert created["write_key"].startswith("wk_") and created["secret_key"].startswith("sk_")
    assert "embedded.postgres_started" in out.stderr


def test_a_command_beside_a_running_embedded_database_says_it_reused_it(tmp_path: Path) -> None:
    """`tenure workspace create` (or `migrate`) run beside `tenure dev` connects to its PostgreSQL, and logged
    ``embedded.postgres_started`` all the same."""
    import os

    tenure = str(Path(sys.executable).parent / "tenure")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENURE_")}
    env["TENURE_STATE_DIR"] = str(tmp_path)
    with EmbeddedServers(tmp_path, redis=False):  # as `tenure dev` runs it
        postmaster = _postmaster(tmp_path)
        out = subprocess.run([tenure, "workspace", "create", "beside", "--json"], env=env, capture_output=True,
                             text=True, timeout=180)
        assert out.returncode == 0, out.stderr
        assert "embedded.postgres_reused" in out.stderr and "embedded.postgres_started" not in out.stderr, out.stderr
        assert _postmaster(tmp_path) == postmaster and _running(postmaster)  # still the same server, still up

"""Logs with JSON on (`TENURE_LOG_JSON=true`, or any `TENURE_ENV` but dev): one JSON object per line on stderr,
whichever library wrote the line, so a log pipeline never splits a traceback into lines of its own."""

import signal
import subprocess
import sys
from pathlib import Path

import orjson

from shared.embedded import free_port
from tests.e2e.stack import one_line, process_env, wait_serving

TENURE = str(Path(sys.executable).parent / "tenure")


def test_json_logs_are_json_lines_for_every_library(settings) -> None:
    """uvicorn's and arq's own lines (a job's traceback included) come out as one JSON object per line too."""
    port = free_port()
    env = process_env(settings, TENURE_LOG_JSON="true", TENURE_LOG_LEVEL="INFO")
    proc = subprocess.Popen([TENURE, "serve", "ingest", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_serving(f"http://127.0.0.1:{port}", proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    lines = [orjson.loads(line) for line in stderr.decode().splitlines()]  # raises on a line that is not JSON
    assert any(line.get("logger") == "uvicorn.error" for line in lines), lines

    traceback = subprocess.run([sys.executable, "-c", (
        "import logging\n"
        "from shared.logging import configure_logging\n"
        "from shared.settings import Settings\n"
        "configure_logging(Settings(log_json=True))\n"
        "try:\n"
        "    1 / 0\n"
        "except ZeroDivisionError:\n"
        "    logging.getLogger('arq.worker').exception('job failed')\n")],
        env={**env, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}, capture_output=True, timeout=60)
    line = orjson.loads(one_line(traceback.stderr))
    assert line["event"] == "job failed" and line["level"] == "error" and line["logger"] == "arq.worker"
    assert "ZeroDivisionError" in line["exception"]

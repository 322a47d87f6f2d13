"""Logs with JSON on (`TENURE_LOG_JSON=true`, or any `TENURE_ENV` but dev): one JSON object per line on stderr,
whichever library wrote the line, so a log pipeline never splits a traceback into lines of its own."""

import signal
import subprocess
import sys
from pathlib import Path

import httpx
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


def test_messages_rejected_in_an_accepted_batch_are_logged_and_counted(settings, workspace) -> None:
    """No SDK reads the 200's ``rejected`` list: a warning line names the refused messages' ids and reasons (at most
    20 of them; ids, never bodies), and ``tenure_ingest_rejected_messages_total`` counts them by reason."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([TENURE, "serve", "ingest", "--port", str(port)],
                            env=process_env(settings, TENURE_LOG_JSON="true"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_serving(url, proc)
        ok = {"type": "track", "userId": "rj", "event": "E", "messageId": "rj-ok"}
        batch = [ok, {"type": "track", "userId": "rj", "event": "E", "messageId": "rj-big",
                      "properties": {"x": "y" * 40_000}},
                 {"type": "track", "userId": "rj", "messageId": "rj-noevent", "properties": {"secret": "s3cr3t"}},
                 {"type": "track", "userId": "rj", "event": "E", "messageId": "rj-nul", "properties": {"x": "a\0b"}},
                 "not an object",
                 *({"type": "track", "userId": "rj", "messageId": f"rj-many-{i}"} for i in range(25))]
        r = httpx.post(f"{url}/v1/batch", json={"batch": batch}, auth=(workspace.write_key, ""), timeout=30)
        assert r.status_code == 200 and r.json()["accepted"] == 1 and len(r.json()["rejected"]) == 29, r.text
        exposition = httpx.get(f"{url}/metrics").text
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    counted = {line.split("reason=\"")[1].split("\"")[0]: float(line.rsplit(" ", 1)[1])
               for line in exposition.splitlines() if line.startswith("tenure_ingest_rejected_messages_total{")}
    assert counted == {"too_large": 1, "missing": 26, "nul": 1, "dict_type": 1}, exposition
    lines = [orjson.loads(line) for line in stderr.decode().splitlines()]
    [line] = [line for line in lines if line["event"] == "ingest.rejected"]
    assert line["level"] == "warning" and line["rejected"] == 29 and line["workspace_id"] == str(workspace.workspace_id)
    assert line["messages"][:4] == [{"message_id": "rj-big", "index": 1, "reasons": ["too_large"]},
                                    {"message_id": "rj-noevent", "index": 2, "reasons": ["missing"]},
                                    {"message_id": "rj-nul", "index": 3, "reasons": ["nul"]},
                                    {"message_id": None, "index": 4, "reasons": ["dict_type"]}]
    assert len(line["messages"]) == 20 and "s3cr3t" not in stderr.decode()


def test_a_request_line_names_the_route_not_the_path_with_its_key_or_address(settings, workspace) -> None:
    """Paths carry write keys (`/v1/projects/{key}/settings`), addresses (`/v1/profiles/{ref}`) and recipients' link
    tokens; the request line names the route template instead, and a path no route matches as "unmatched" (it was
    logged as it came: `/v1/nosuch/jane.doe@example.com` kept the address)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([TENURE, "serve", "ingest", "--port", str(port)],
                            env=process_env(settings, TENURE_LOG_JSON="true", TENURE_LOG_LEVEL="INFO"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_serving(url, proc)
        auth = {"Authorization": f"Bearer {workspace.secret_key}"}
        assert httpx.get(f"{url}/v1/profiles/someone@example.com", headers=auth, timeout=30).status_code == 404
        httpx.get(f"{url}/v1/projects/{workspace.write_key}/settings", timeout=30)
        assert httpx.get(f"{url}/v1/nosuch/jane.doe@example.com", timeout=30).status_code == 404
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    text = stderr.decode()
    paths = [line["path"] for line in map(orjson.loads, text.splitlines()) if line["event"] == "http.request"]
    assert "/v1/profiles/{ref}" in paths and "unmatched" in paths, paths
    assert "someone@example.com" not in text and workspace.write_key not in text and "jane.doe" not in text

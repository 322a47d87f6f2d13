"""segment-analytics-python, unchanged, pointed at a real ingest server on loopback."""

import asyncio
import threading
import time

import uvicorn
from sqlalchemy import text

from services.ingest.app import create_app
from shared.embedded import free_port


async def test_analytics_python_sdk_delivers_every_call(settings, workspace, sessionmaker) -> None:
    import segment.analytics as analytics_mod
    from segment.analytics import Client

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 15
        while not server.started and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        errors: list[Exception] = []
        client = Client(workspace.write_key, host=f"http://127.0.0.1:{port}", on_error=lambda e, b: errors.append(e),
                        max_retries=1, upload_size=10)
        client.identify("sdk-user", {"email": "sdk@example.com", "first_name": "Sam"})
        for i in range(25):
            client.track("sdk-user", "Song Played", {"n": i})
            if i in (3, 14):  # Python's json.dumps writes NaN and Infinity: that message is refused, not its batch
                client.track("sdk-user", "Scored", {"score": float("nan") if i == 3 else float("inf")})
        client.page("sdk-user", "Docs", "Install")
        client.screen("sdk-user", "App", "Home")
        client.group("sdk-user", "acme-inc", {"industry": "retail"})
        client.alias("sdk-anon-1", "sdk-user")
        await asyncio.to_thread(client.flush)
        await asyncio.to_thread(client.join)
        assert not errors
        async with sessionmaker() as s:
            rows = (await s.execute(text("select type, count(*) from ingest.events where workspace_id = :ws "
                                         "group by type"), {"ws": workspace.workspace_id})).all()
        assert dict(rows) == {"identify": 1, "track": 25, "page": 1, "screen": 1, "group": 1, "alias": 1}
        assert analytics_mod is not None
    finally:
        server.should_exit = True
        thread.join(timeout=10)

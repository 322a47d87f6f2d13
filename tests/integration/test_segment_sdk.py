"""segment-analytics-python, unchanged, pointed at a real ingest server on loopback."""

import asyncio
import threading
import time

import uvicorn
from sqlalchemy import text

from services.ingest.app import create_app
from shared.embedded import free_port
from shared.testing import http_server


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


async def test_analytics_python_sdk_reads_why_a_batch_was_refused(settings, workspace) -> None:
    """The SDK reads an error body's ``code`` and ``message`` (else it logs "Unknown error" with no reason), and
    does not retry a 401."""
    from segment.analytics import Client
    from segment.analytics.request import APIError

    posts: list[str] = []
    app = create_app(settings)

    async def counted(scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            posts.append(scope["path"])
        await app(scope, receive, send)

    with http_server(counted) as port:
        errors: list[Exception] = []
        client = Client("wk_not-a-key", host=f"http://127.0.0.1:{port}", on_error=lambda e, b: errors.append(e),
                        max_retries=3)
        client.track("sdk-user", "Song Played")
        await asyncio.to_thread(client.flush)
        await asyncio.to_thread(client.join)
    assert posts == ["/v1/batch"]
    assert len(errors) == 1 and isinstance(errors[0], APIError), errors
    assert (errors[0].status, errors[0].code) == (401, "unauthorized"), vars(errors[0])
    assert "key" in errors[0].message

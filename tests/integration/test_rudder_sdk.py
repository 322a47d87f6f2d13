"""rudder-sdk-python, unchanged, pointed at a real ingest server on loopback: what reaches the server when ingest
refuses a batch, and RudderStack's larger batches with TENURE_INGEST_MAX_BATCH_BYTES raised."""

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import text

from services.ingest.app import create_app
from shared.testing import http_server


class _Counted:
    """The app, counting the POSTs that reach it (the SDK's attempts, retries included)."""

    def __init__(self, app: Any):
        self.app, self.posts = app, 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            self.posts += 1
        await self.app(scope, receive, send)


@contextmanager
def _ingest(settings) -> Iterator[tuple[str, _Counted]]:
    app = _Counted(create_app(settings))
    with http_server(app) as port:
        yield f"http://127.0.0.1:{port}", app


def _rudder(write_key: str, host: str, errors: list[Exception], **config: Any) -> Any:
    from rudderstack.analytics import Client

    return Client(write_key, host=host, on_error=lambda e, batch: errors.append(e), max_retries=3, upload_interval=1,
                  **config)


async def _count(sessionmaker, ws: uuid.UUID, prefix: str) -> int:
    async with sessionmaker() as s:
        return (await s.execute(text("select count(*) from ingest.events where workspace_id = :ws "
                                     "and message_id like :p"), {"ws": ws, "p": f"{prefix}%"})).scalar_one()


def _big_batch(client: Any, prefix: str, n: int = 20) -> None:
    """``n`` messages of 30 KB each (each within Segment's 32 KB): one batch of about 600 KB."""
    for i in range(n):
        client.track(user_id="rs-user", event="Big", properties={"blob": "x" * 30_000}, message_id=f"{prefix}-{i}")


async def test_a_wrong_write_key_and_a_batch_over_the_limit_are_not_retried(settings, workspace, sessionmaker
                                                                            ) -> None:
    """rudder-sdk-python reads an error body's ``code`` and ``message``: without them it raised KeyError, which it
    retries as a network failure (``max_retries`` times, 10 by default) instead of giving up on a 4xx."""
    from rudderstack.analytics.request import APIError

    with _ingest(settings) as (host, app):
        errors: list[Exception] = []
        client = _rudder("wk_not-a-key", host, errors)
        client.track(user_id="rs-user", event="E", message_id="rs-wrong-key")
        await asyncio.to_thread(client.flush)
        assert app.posts == 1
        assert len(errors) == 1 and isinstance(errors[0], APIError), errors
        assert (errors[0].status, errors[0].code) == (401, "unauthorized") and errors[0].message, vars(errors[0])

        errors.clear()
        client = _rudder(workspace.write_key, host, errors, upload_size=20)
        _big_batch(client, "rs-big")
        await asyncio.to_thread(client.flush)
        assert app.posts == 2
        assert len(errors) == 1 and isinstance(errors[0], APIError), errors
        assert (errors[0].status, errors[0].code) == (413, "payload-too-large"), vars(errors[0])
        assert "500 KB" in errors[0].message
    assert await _count(sessionmaker, workspace.workspace_id, "rs-big") == 0


async def test_rudderstack_batches_are_stored_with_the_batch_limit_raised(settings, workspace, sessionmaker) -> None:
    """rudder-sdk-python sizes batches up to 4 MB: with TENURE_INGEST_MAX_BATCH_BYTES at rudder-server's 4000 KB the
    batch that was a 413 above is stored whole."""
    with _ingest(settings.model_copy(update={"ingest_max_batch_bytes": 4_096_000})) as (host, app):
        errors: list[Exception] = []
        client = _rudder(workspace.write_key, host, errors, upload_size=20)
        _big_batch(client, "rs-raised")
        await asyncio.to_thread(client.flush)
        assert not errors and app.posts == 1
    assert await _count(sessionmaker, workspace.workspace_id, "rs-raised") == 20

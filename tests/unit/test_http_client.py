import uvicorn

from shared.http import KEEPALIVE_EXPIRY_S, make_http_client
from shared.settings import Settings


def test_idle_connections_are_dropped_before_the_server_closes_them() -> None:
    # a pooled connection reused just as uvicorn closes it fails the request (RemoteProtocolError)
    client = make_http_client(Settings())  # nothing opened: nothing to close
    assert client._transport._pool._keepalive_expiry == KEEPALIVE_EXPIRY_S  # type: ignore[attr-defined]
    assert KEEPALIVE_EXPIRY_S < uvicorn.Config(app=None).timeout_keep_alive - 0.5

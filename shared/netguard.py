"""Outbound requests to URLs customers give us (webhooks): never to private, loopback or link-local
addresses, so an API key cannot turn the worker into a probe of the internal network (SSRF).

The host is resolved and every address it resolves to must be public. (A name that changes between this
check and the request can still slip through; an egress proxy or network policy is the complete answer.)
"""

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

import httpx


class BlockedURL(ValueError):
    pass


class Unresolved(BlockedURL):
    """The host did not resolve (now): refused when sending, but on save it may be a name to come or a passing
    DNS fault, not a private address."""


async def check_public(url: str, *, allow_private: bool) -> None:
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a port out of range or not a number
        httpx.URL(url)  # what the client will refuse later (control characters...) is refused now
    except (ValueError, httpx.InvalidURL) as exc:
        raise BlockedURL(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BlockedURL(f"not an http(s) URL: {url[:200]}")
    if allow_private:
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, port or 443,
                                                              type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise Unresolved(f"cannot resolve {parts.hostname}: {exc}") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            raise BlockedURL(f"{parts.hostname} resolves to a non-public address ({address})")

"""What the CLI makes of a service's HTTP answer: problem+json as one readable message, a body that must be
JSON checked before use, and text from a server made safe for a terminal.

A proxy or load balancer in front of the services may answer with an HTML page; a server's text may hold
terminal control sequences. Neither should reach the user as a traceback or as escape codes."""

import re
from typing import Any

import httpx

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # C0 and C1 controls (ESC among them), not \t or \n
_MAX = 500


class UnreadableAnswer(ValueError):
    """The service answered something that is not the JSON its API documents."""


def printable(text: str) -> str:
    """``text`` without control characters (an ESC sequence from a server would drive the terminal)."""
    return _CONTROL.sub("", text)


def problem_text(resp: httpx.Response) -> str:
    """``STATUS detail`` with each field error (``at: msg``), from a problem+json answer; otherwise the start
    of the body as text."""
    try:
        doc = resp.json()
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or not isinstance(doc.get("detail") or doc.get("title"), str):
        return printable(f"{resp.status_code} {resp.text[:_MAX]}".rstrip())
    lines = [f"{resp.status_code} {doc.get('detail') or doc.get('title')}"]
    for err in (doc.get("errors") or doc.get("rejected") or [])[:20]:
        if isinstance(err, dict):
            where = err.get("at") or ".".join(str(p) for p in err.get("loc") or [] if p != "body")
            msg = err.get("msg") or err.get("errors") or ""
            lines.append(f"  {where}: {msg}" if where else f"  {msg}")
    return printable("\n".join(lines))


def json_of(resp: httpx.Response) -> Any:
    """The answer's JSON, or :class:`UnreadableAnswer` saying what came instead."""
    try:
        return resp.json()
    except ValueError:
        kind = resp.headers.get("content-type", "no content type")
        raise UnreadableAnswer(f"{resp.request.method} {resp.request.url} answered {resp.status_code} with "
                               f"{kind}, not JSON: {printable(resp.text[:200])!r}") from None

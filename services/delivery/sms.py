"""SMS through Twilio's Messages REST API, and what Twilio tells us back (pure parts and the transport).

- Sending: ``POST {base}/2010-04-01/Accounts/{sid}/Messages.json`` with form fields ``To``, ``From``
  (or ``MessagingServiceSid``), ``Body`` and ``StatusCallback`` (when there is a public URL); HTTP Basic
  auth (account SID, auth token). 201 carries the message ``sid``. 429 (error 20429: never processed,
  safe to retry; a ``Retry-After`` is honoured) and 5xx are transient; other 4xx permanent (e.g. 21211
  invalid number), and error 21610 (the recipient replied STOP) also suppresses the number here.
- The Messages API takes no idempotency key. An attempt that may have reached Twilio without an answer (a
  read timeout, a dropped connection, a 5xx) is therefore looked up before it is tried again
  (:func:`find_sent`): ``GET …/Messages.json?To=…`` lists the number's messages, most recent first, and one
  from our sender with the same body, created since our message was, is taken as the first attempt's.
- Webhooks (status callbacks, inbound messages) are verified as Twilio's own ``RequestValidator`` does:
  ``X-Twilio-Signature`` = base64(HMAC-SHA1(auth token, full URL + each POST parameter name and value,
  sorted by name, then by value)); the URL is tried with and without its default port (Twilio is not
  consistent); a JSON body is covered by the URL's ``bodySHA256`` (hex SHA-256 of the raw body) instead of
  parameters. With a Webhook Setting's SharedKey, ``X-Twilio-Webhooks-Signature-Settings`` names the
  algorithm (HMAC_SHA1 or HMAC_SHA256) and the key's secret replaces the auth token.
- Inbound keywords (single word, any case): STOP and its synonyms opt out, START/YES/UNSTOP opt back
  in, HELP/INFO get the help text: the workspace setting ``sms_help_text``, else one naming the workspace
  and a contact (``help_text``), as US carriers ask of a HELP reply (brand or program name, a contact,
  how to opt out).
"""

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from urllib.parse import parse_qs, urlsplit, urlunsplit

import httpx

from services.delivery.mailer import SendError, split_address
from services.delivery.push import retry_after
from shared.settings import Settings

STOP_WORDS = {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"}
START_WORDS = {"START", "YES", "UNSTOP"}
HELP_WORDS = {"HELP", "INFO"}
UNSUBSCRIBED_RECIPIENT = 21610
# never move a message back: Twilio's callbacks may arrive out of order
STATUS_RANK = {"queued": 0, "sending": 1, "sent": 2, "delivered": 3, "undelivered": 3, "failed": 3}


def keyword(body: str) -> str | None:
    word = body.strip().upper()
    if word in STOP_WORDS:
        return "stop"
    if word in START_WORDS:
        return "start"
    if word in HELP_WORDS:
        return "help"
    return None


def help_text(workspace_name: str | None, workspace_settings: Mapping[str, object] | None, email_from: str) -> str:
    """The answer to HELP: the workspace's own ``sms_help_text``, else its name, the address its mail comes
    from as the contact, and the keywords."""
    own = (workspace_settings or {}).get("sms_help_text")
    if isinstance(own, str) and own.strip():
        return own.strip()
    contact = split_address(email_from)[1] or email_from
    brand = f"{workspace_name}: " if workspace_name else ""
    return (f"{brand}for help, contact {contact}. Reply STOP to unsubscribe, START to subscribe again. "
            "Msg&data rates may apply.")


ALGORITHMS = {"HMAC_SHA1": hashlib.sha1, "HMAC_SHA256": hashlib.sha256}


def signature(secret: str, url: str, params: Mapping[str, str] | Iterable[tuple[str, str]],
              algorithm: str = "HMAC_SHA1") -> str:
    pairs = list(params.items() if isinstance(params, Mapping) else params)
    data = url + "".join(name + value for name in sorted({n for n, _ in pairs})
                         for value in sorted({v for n, v in pairs if n == name}))
    return base64.b64encode(hmac.new(secret.encode(), data.encode(), ALGORITHMS[algorithm]).digest()).decode()


def _port_variants(url: str) -> list[str]:
    """The URL as given, without its port and with the scheme's default port."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    userinfo = parts.netloc.rpartition("@")[0]
    bare = (userinfo + "@" if userinfo else "") + host
    default = bare + (":443" if parts.scheme == "https" else ":80")
    return list(dict.fromkeys([url, urlunsplit(parts._replace(netloc=bare)) if parts.port else url,
                               url if parts.port else urlunsplit(parts._replace(netloc=default))]))


def valid_signature(secret: str, url: str, params: Mapping[str, str] | Iterable[tuple[str, str]],
                    given: str | None, algorithm: str = "HMAC_SHA1", body: bytes | None = None) -> bool:
    """Twilio's check. ``body``: the raw body of a JSON webhook, which must match the URL's
    ``bodySHA256`` (the parameters are then not part of the signature)."""
    if not given or algorithm not in ALGORITHMS:
        return False
    body_hash = parse_qs(urlsplit(url).query).get("bodySHA256")
    if body is not None:
        # bytes: compare_digest refuses a str with non-ASCII characters (a query anyone can send)
        if not body_hash or not hmac.compare_digest(hashlib.sha256(body).hexdigest().encode(), body_hash[0].encode()):
            return False
        params = ()
    return any(hmac.compare_digest(signature(secret, u, params, algorithm).encode(), given.encode())
               for u in _port_variants(url))


def signature_algorithm(settings_header: str | None) -> str:
    """The algorithm ``X-Twilio-Webhooks-Signature-Settings: key=…,algorithm=…`` names (absent: HMAC_SHA1)."""
    for part in (settings_header or "").split(","):
        name, _, value = part.partition("=")
        if name.strip() == "algorithm" and value.strip():
            return value.strip().upper()
    return "HMAC_SHA1"


class Unsubscribed(SendError):
    """Twilio refuses the number: its owner replied STOP."""


def _configured(settings: Settings) -> tuple[str, str, str]:
    if not (settings.twilio_account_sid and settings.twilio_auth_token and settings.twilio_from):
        raise SendError("SMS is not configured (TENURE_TWILIO_ACCOUNT_SID, _AUTH_TOKEN, _FROM)", permanent=True)
    return settings.twilio_account_sid, settings.twilio_auth_token, settings.twilio_from


def _messages_url(settings: Settings, account: str) -> str:
    return f"{settings.twilio_base_url.rstrip('/')}/2010-04-01/Accounts/{account}/Messages.json"


# errors after which Twilio certainly did not take the message (the request never reached it)
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


async def send(settings: Settings, http: httpx.AsyncClient, to: str, body: str, status_callback: str | None) -> str:
    """Send one SMS; returns Twilio's message SID. Raises :class:`SendError`, whose ``not_sent`` says Twilio
    certainly did not take the message (otherwise :func:`find_sent` must ask before it is sent again)."""
    account, token, sender = _configured(settings)
    form = {"To": to, "Body": body, **({"MessagingServiceSid": sender} if sender.startswith("MG") else
                                       {"From": sender})}
    if status_callback:
        form["StatusCallback"] = status_callback
    try:
        resp = await http.post(_messages_url(settings, account), data=form, auth=(account, token),
                               timeout=settings.provider_timeout_s)
    except httpx.HTTPError as exc:
        raise SendError(f"Twilio unreachable: {type(exc).__name__}", permanent=False,
                        not_sent=isinstance(exc, _NOT_SENT)) from None
    if resp.status_code in (200, 201):
        return str(resp.json()["sid"])
    try:
        detail = resp.json()
    except ValueError:
        detail = {}
    code, message = detail.get("code"), detail.get("message") or resp.text[:200]
    if code == UNSUBSCRIBED_RECIPIENT:
        raise Unsubscribed(f"Twilio {code}: {message}", permanent=True, not_sent=True)
    transient = resp.status_code == 429 or resp.status_code >= 500
    # a 4xx (429 included: error 20429 is "never processed") is Twilio refusing it; a 5xx may come after the take
    raise SendError(f"Twilio {resp.status_code} ({code}): {message}", permanent=not transient,
                    not_sent=resp.status_code < 500, retry_after_s=retry_after(resp) if transient else None)


# Twilio's clock and ours may differ: a message created this much before ours still counts as a candidate
CLOCK_SLACK = timedelta(minutes=5)
LOOKUP_PAGE = 50


async def find_sent(settings: Settings, http: httpx.AsyncClient, to: str, body: str,
                    since: datetime) -> list[str]:
    """The SIDs, oldest first, of outbound messages Twilio holds to ``to`` from our sender with this
    ``body``, created since ``since`` (less ``CLOCK_SLACK``): candidates for an earlier attempt that Twilio
    took without our hearing back. Only the number's latest ``LOOKUP_PAGE`` messages are read. Raises
    :class:`SendError` (transient) when Twilio cannot be asked: the message must then wait, not go again."""
    account, token, sender = _configured(settings)
    try:
        resp = await http.get(_messages_url(settings, account), params={"To": to, "PageSize": LOOKUP_PAGE},
                              auth=(account, token), timeout=settings.provider_timeout_s)
    except httpx.HTTPError as exc:
        raise SendError(f"Twilio unreachable while checking an earlier attempt: {type(exc).__name__}",
                        permanent=False) from None
    if resp.status_code != 200:
        raise SendError(f"Twilio {resp.status_code} while checking an earlier attempt: {resp.text[:200]}",
                        permanent=False, retry_after_s=retry_after(resp))
    try:
        listed = resp.json().get("messages") or []
    except (ValueError, AttributeError):
        raise SendError("Twilio's message list was not JSON", permanent=False) from None
    earliest = since - CLOCK_SLACK
    found: list[tuple[datetime, str]] = []
    for m in listed:
        if not isinstance(m, dict) or not str(m.get("direction", "")).startswith("outbound"):
            continue
        if m.get("body") != body or sender not in (m.get("from"), m.get("messaging_service_sid")):
            continue
        try:
            created = parsedate_to_datetime(str(m.get("date_created")))  # RFC 2822, as Twilio writes dates
        except (TypeError, ValueError):
            continue
        if created.tzinfo is not None and created >= earliest and m.get("sid"):
            found.append((created, str(m["sid"])))
    return [sid for _, sid in sorted(found)]

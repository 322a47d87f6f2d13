"""SMS through Twilio's Messages REST API, and what Twilio tells us back (pure parts and the transport).

- Sending: ``POST {base}/2010-04-01/Accounts/{sid}/Messages.json`` with form fields ``To``, ``From``
  (or ``MessagingServiceSid``), ``Body`` and ``StatusCallback``; HTTP Basic auth (account SID, auth
  token). 201 carries the message ``sid``. 429 and 5xx are transient; other 4xx permanent, and error
  21610 (the recipient replied STOP) also suppresses the number here.
- Webhooks (status callbacks, inbound messages) are verified as Twilio documents: ``X-Twilio-Signature``
  = base64(HMAC-SHA1(auth token, full URL + each POST parameter name and value, sorted by name)).
- Inbound keywords (single word, any case): STOP and its synonyms opt out, START/YES/UNSTOP opt back
  in, HELP/INFO get the help text.
"""

import base64
import hashlib
import hmac
from collections.abc import Mapping

import httpx

from services.delivery.mailer import SendError
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


def signature(auth_token: str, url: str, params: Mapping[str, str]) -> str:
    data = url + "".join(f"{k}{params[k]}" for k in sorted(params))
    return base64.b64encode(hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def valid_signature(auth_token: str, url: str, params: Mapping[str, str], given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(signature(auth_token, url, params).encode(), (given or "").encode())


class Unsubscribed(SendError):
    """Twilio refuses the number: its owner replied STOP."""


async def send(settings: Settings, http: httpx.AsyncClient, to: str, body: str, status_callback: str | None) -> str:
    """Send one SMS; returns Twilio's message SID. Raises :class:`SendError`."""
    if not (settings.twilio_account_sid and settings.twilio_auth_token and settings.twilio_from):
        raise SendError("SMS is not configured (TENURE_TWILIO_ACCOUNT_SID, _AUTH_TOKEN, _FROM)", permanent=True)
    sender = settings.twilio_from
    form = {"To": to, "Body": body, **({"MessagingServiceSid": sender} if sender.startswith("MG") else
                                       {"From": sender})}
    if status_callback:
        form["StatusCallback"] = status_callback
    url = f"{settings.twilio_base_url.rstrip('/')}/2010-04-01/Accounts/{settings.twilio_account_sid}/Messages.json"
    try:
        resp = await http.post(url, data=form, auth=(settings.twilio_account_sid, settings.twilio_auth_token),
                               timeout=settings.provider_timeout_s)
    except httpx.HTTPError as exc:
        raise SendError(f"Twilio unreachable: {type(exc).__name__}", permanent=False) from None
    if resp.status_code in (200, 201):
        return str(resp.json()["sid"])
    try:
        detail = resp.json()
    except ValueError:
        detail = {}
    code, message = detail.get("code"), detail.get("message") or resp.text[:200]
    if code == UNSUBSCRIBED_RECIPIENT:
        raise Unsubscribed(f"Twilio {code}: {message}", permanent=True)
    transient = resp.status_code == 429 or resp.status_code >= 500
    raise SendError(f"Twilio {resp.status_code} ({code}): {message}", permanent=not transient)

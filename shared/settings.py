"""Typed settings for every Tenure process.

All configuration comes from environment variables prefixed ``TENURE_`` (see ``docs/configuration.md``).
Settings are read once at a process edge (``create_app``, worker start-up, the CLI) and passed along;
nothing else reads ``os.environ``.
"""

import json
import re
from enum import StrEnum
from typing import Annotated, Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.validation import parse_day_window

SERVICES = ("ingest", "segment", "campaign", "delivery")
ServiceName = Literal["ingest", "segment", "campaign", "delivery"]

_PLACEHOLDER = "change-me"
MIN_SECRET_CHARS = 16  # the shortest internal token or signing secret prod takes
_POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+asyncpg", "postgresql+psycopg", "postgresql+psycopg2")
_REDIS_SCHEMES = ("redis", "rediss", "unix")


Port = Annotated[int, Field(ge=1, le=65535)]


class Environment(StrEnum):
    dev = "dev"
    test = "test"
    prod = "prod"


class Settings(BaseSettings):
    """Configuration shared by all services (one flat namespace keeps the operator's table short)."""

    # hide_input_in_errors: a refused value may be a URL with its password, or a whole secret; errors name the
    # variable and say what is wrong, never what it held
    model_config = SettingsConfigDict(env_prefix="TENURE_", extra="ignore", hide_input_in_errors=True)

    env: Environment = Environment.dev
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        default="INFO", description="the least severe log level written (any case)")
    log_json: bool | None = Field(default=None, description="JSON logs; defaults to on outside dev")

    database_url: str | None = Field(
        default=None,
        description="postgresql://user:pass@host:port/db. Unset: `tenure dev` starts an embedded PostgreSQL.",
    )
    redis_url: str | None = Field(
        default=None, description="redis://host:port/db. Unset: `tenure dev` starts an embedded Redis."
    )
    db_pool_size: int = Field(default=10, ge=1, le=1000,
                              description="PostgreSQL connections a process keeps (and as many again in bursts)")
    db_statement_timeout_ms: int = Field(default=30_000, ge=0, description="longest statement (ms; 0 = none)")
    queue_prefix: str = Field(default="tenure", description="prefix of every arq queue name")

    state_dir: str = Field(default=".tenure", description="where `tenure dev` keeps embedded data")

    host: str = "127.0.0.1"
    ingest_port: Port = 8001
    segment_port: Port = 8002
    campaign_port: Port = 8003
    delivery_port: Port = 8004
    inbox_port: Port = 8025
    worker_metrics_port: int = Field(
        default=0, ge=0, le=65535,
        description="port of a worker's Prometheus /metrics and its /healthz (0: off); APIs serve /metrics on "
                    "their own port"
    )
    worker_stale_after_s: float = Field(
        default=60.0, gt=0,
        description="a worker's /healthz answers 503 once its event loop has not run for this long (stuck)",
    )

    ingest_url: str | None = None
    segment_url: str | None = None
    campaign_url: str | None = None
    delivery_url: str | None = None

    internal_token: str = Field(
        default=_PLACEHOLDER, description="shared secret for service-to-service calls (Bearer)"
    )

    http_timeout_s: float = Field(default=10.0, gt=0)
    http_retries: int = Field(default=3, ge=0, le=10)

    smtp_host: str = "127.0.0.1"
    smtp_port: Port = 1025
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_starttls: bool = False
    smtp_tls: bool = False
    smtp_timeout_s: float = Field(default=15.0, gt=0)
    smtp_ca_file: str | None = Field(default=None, description="CA bundle (PEM) to verify the SMTP server's "
                                     "certificate with, for a relay behind a private CA (default: the system's)")
    email_provider: Literal["smtp", "sendgrid"] = Field(default="smtp", description="how email leaves")
    email_fallback_provider: Literal["smtp", "sendgrid"] | None = Field(
        default=None, description="used while the primary keeps failing (circuit breaker)")
    circuit_failures: int = Field(default=5, ge=1, description="failures within a minute that open a circuit")
    circuit_open_s: float = Field(default=60.0, ge=0, description="how long an open circuit sends to the fallback")
    sendgrid_api_key: str | None = None
    sendgrid_base_url: str = "https://api.sendgrid.com"
    sendgrid_webhook_public_key: str | None = Field(
        default=None, description="base64 DER public key that verifies SendGrid's signed Event Webhook "
                                  "(its one URL, <public URL>/webhooks/sendgrid/events, serves every workspace)")
    twilio_account_sid: str | None = Field(default=None, description="SMS through Twilio's Messages API")
    twilio_auth_token: str | None = Field(default=None, description="also verifies Twilio's webhook signatures")
    twilio_webhook_shared_key: str | None = Field(
        default=None, description="the SharedKey secret of a Twilio Webhook Setting, when one signs our webhooks")
    twilio_from: str | None = Field(default=None, description="sender number (E.164) or Messaging Service SID (MG…)")
    twilio_base_url: str = "https://api.twilio.com"
    webhook_allow_private: bool = Field(
        default=False, description="let webhooks reach private/loopback addresses (tests, closed networks)")
    fcm_service_account: str | None = Field(
        default=None, description="push through FCM HTTP v1: the service account key (JSON text or a file path)")
    fcm_base_url: str = "https://fcm.googleapis.com"
    apns_key: str | None = Field(
        default=None, description="push to iOS devices through APNs (token auth): the .p8 signing key (PEM text or a "
                                  "file path); with the key id, team id and bundle id set, iOS tokens go to APNs")
    apns_key_id: str | None = Field(default=None, description="the 10-character Key ID of the APNs key")
    apns_team_id: str | None = Field(default=None, description="the Apple Developer Team ID (the token's issuer)")
    apns_bundle_id: str | None = Field(default=None, description="the app's bundle id (the apns-topic header)")
    apns_base_url: str = Field(default="https://api.push.apple.com",
                               description="https://api.sandbox.push.apple.com for development builds")
    apns_ca_file: str | None = Field(default=None, description="trust this CA bundle for APNs (default: the system's)")
    apns_timeout_s: float = Field(default=10.0, gt=0, description="timeout of every APNs request")
    vapid_private_key: str | None = Field(
        default=None, description="Web Push (VAPID): the P-256 private key (PEM text, a PEM file path, or the raw "
                                  "32-byte key in base64url as web-push tools print it)")
    vapid_subject: str | None = Field(
        default=None, description="Web Push: a contact for push services, mailto:ops@example.com or an https: URL")
    push_ttl_s: int = Field(default=86_400, ge=0, le=2_419_200,
                            description="how long FCM, APNs and Web Push services keep an undelivered notification")
    delivery_lease_s: float = Field(default=60.0, ge=1, description="how long a claimed message is a worker's; "
                                                                      "after that (the worker died) it is taken again")
    delivery_retry_for_s: float = Field(
        default=86_400, ge=0, le=30 * 86_400,
        description="how long a message whose provider keeps answering with a transient error (429, 5xx, "
                    "unreachable) is retried, counted from its first such failure, before it fails; SMS, push and "
                    "webhooks (a push also expires after TENURE_PUSH_TTL_S)")
    email_retry_for_s: float = Field(
        default=345_600, ge=0, le=30 * 86_400,
        description="the same for email (a 4xx reply such as greylisting, an unreachable relay): RFC 5321 "
                    "§4.5.4.1 asks for at least 4-5 days")
    delivery_concurrency: int = Field(default=20, ge=1, le=200, description="messages a delivery worker sends at "
                                      "once, each sender with its own SMTP session")
    provider_timeout_s: float = Field(default=10.0, gt=0, description="timeout of every provider HTTP call")
    provider_rate_per_s: dict[str, float] = Field(
        default_factory=dict, description='sends per second per provider across replicas, e.g. {"twilio": 10}')
    workspace_send_rate_per_s: float = Field(default=0, ge=0,
                                             description="sends per second per workspace (0 = unlimited)")
    sms_marketing_hours: str = Field(
        default="08:00-21:00",
        description="when a marketing SMS may reach its recipient, in the recipient's time zone (from the number): "
                    "held until then (TCPA: 8:00-21:00); empty = no window")
    email_from: str = "Tenure <hello@tenure.localhost>"
    signing_secret: str = Field(
        default=_PLACEHOLDER,
        description="key for the signed links in messages (unsubscribe, preferences, open pixel, click redirect), "
                    "outgoing webhook signatures and the lists' cursors (next_cursor): the same in every replica",
    )
    signing_secret_previous: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="earlier signing secrets still accepted when a link or cursor is checked (comma-separated, or a "
                    "JSON list), so a rotation leaves the links in mail already sent working; nothing is signed "
                    "with them")
    delivery_public_url: str | None = Field(
        default=None, description="where recipients reach delivery's public pages (default: its local URL)")

    dev_inbox: bool = Field(default=True, description="`tenure dev` runs a local SMTP sink and web inbox")
    dev_demo: bool = Field(default=True, description="`tenure dev` creates a demo workspace on first start")

    ingest_public_url: str | None = Field(
        default=None, description="where SDKs reach ingest (e.g. https://t.example.com): the apiHost handed out by "
                                  "/v1/projects/{writeKey}/settings (default: the host the request came to)")
    ingest_rate_limit_per_s: int = Field(
        default=1000, ge=0, description="tracking requests per second per workspace (0 = unlimited); over it: 429"
    )
    ingest_max_batch_bytes: int = Field(
        default=500 * 1024, ge=32 * 1024, le=4_096_000,
        description="largest batch the tracking API takes (bytes of JSON, after gzip is undone); over it: 413 naming "
                    "the limit. Segment's 500 KB by default; RudderStack's SDKs send larger batches (rudder-server "
                    "takes 4000 KB): raise it to 4096000 for them")

    max_body_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1024,
        description="largest request body any API reads (bytes, as sent: compressed if gzip); over it: 413. It fits "
                    "a message at its 1,000,000-character html limit, or a batch of 500 averaging 32 KB each. Routes "
                    "anyone may call (provider webhooks, unsubscribe and preference pages) have smaller limits of "
                    "their own (never above this one); the tracking routes check Segment's 32 KB per message and "
                    "ingest_max_batch_bytes per batch after it, so keep it above that")

    consumer_batch_size: int = Field(default=500, ge=1, le=10_000)
    segment_partitions: int = Field(
        default=8, ge=1, le=1024,
        description="profiles are split into this many partitions (hash of the profile id) whose re-evaluation "
                    "segment worker replicas share; a partition is processed by one replica at a time",
    )
    feed_poll_interval_s: float = Field(default=5.0, gt=0)

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_in_any_case(cls, level: object) -> object:
        return level.upper() if isinstance(level, str) else level

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, url: str | None) -> str | None:
        """Parsed as the engine will parse it, so a typo stops the process at start-up with the variable named,
        not at its first query with a traceback."""
        if not url:
            return url
        from sqlalchemy.engine import make_url

        try:
            parsed = make_url(url)
        except Exception:  # noqa: BLE001 - ArgumentError, or ValueError for a port that is not a number
            raise ValueError("not a URL: expected postgresql://user:password@host:5432/database") from None
        if parsed.drivername not in _POSTGRES_SCHEMES:
            raise ValueError(f"the scheme must be postgresql:// (got {parsed.drivername}://)")
        if parsed.host and "@" in parsed.host:
            raise ValueError("the host contains '@': percent-encode the password's special characters (@ as %40)")
        return url

    @field_validator("signing_secret_previous", mode="before")
    @classmethod
    def _secret_list(cls, value: object) -> object:
        """``old1,old2`` or ``["old1", "old2"]``; an empty variable (or item) is no secret."""
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                try:
                    value = json.loads(value)
                except ValueError:
                    raise ValueError('not a JSON list: expected ["old-secret", ...] or old1,old2') from None
            else:
                value = [item.strip() for item in value.split(",")]
        return [item for item in value if item != ""] if isinstance(value, list) else value

    @field_validator("sms_marketing_hours")
    @classmethod
    def _sms_window(cls, v: str) -> str:
        parse_day_window(v)  # (the sender reads it with the same rule)
        return v

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, url: str | None) -> str | None:
        """What arq's ``RedisSettings.from_dsn`` accepts."""
        if not url:
            return url
        parts = urlsplit(url)
        if parts.scheme not in _REDIS_SCHEMES:
            raise ValueError("not a Redis URL: expected redis://host:6379/0 (rediss:// for TLS, or unix:///path)")
        try:
            _ = parts.port
            if parts.scheme != "unix":
                db = (parse_qs(parts.query).get("db") or [parts.path.lstrip("/") or "0"])[0]
                int(db)
        except ValueError:
            raise ValueError("the port and the database number must be integers, as in redis://host:6379/0") from None
        return url

    @field_validator("vapid_subject")
    @classmethod
    def _vapid_contact(cls, subject: str | None) -> str | None:
        """RFC 8292 §2.1: the JWT's ``sub`` is a ``mailto:`` or ``https:`` URI. Apple's push service answers any
        other with 403 BadJwtToken, and the reference library (py-vapid) refuses to sign one. A bare address
        (``ops@example.com``) is taken as the ``mailto:`` it means; anything else stops the process at start-up
        instead of failing every Web Push."""
        if not subject:
            return subject
        subject = subject.strip()
        if ":" not in subject and re.fullmatch(r"[^@\s/]+@[^@\s/]+", subject):
            subject = f"mailto:{subject}"
        parts = urlsplit(subject)  # (the scheme as written, lower case: py-vapid compares it so)
        if not ((subject.startswith("mailto:") and "@" in parts.path)
                or (subject.startswith("https://") and parts.hostname)):
            raise ValueError("the contact must be a mailto: or https: URI, as in mailto:push-ops@example.com")
        return subject
        subject = subject.strip()
        parts = urlsplit(subject)  # (the scheme as written, lower case: py-vapid compares it so)
        if not ((subject.startswith("mailto:") and "@" in parts.path)
                or (subject.startswith("https://") and parts.hostname)):
            raise ValueError("the contact must be a mailto: or https: URI, as in mailto:push-ops@example.com")
        return subject

    @model_validator(mode="after")
    def _refuse_placeholder_secrets(self) -> "Settings":
        """In prod, the placeholder, an empty value (a key missing from an ExternalSecret) or a short one is refused:
        with an empty signing secret anyone can sign a click link (an open redirect) or an unsubscribe link."""
        if self.env != Environment.prod:
            return self
        for name, value in (("TENURE_INTERNAL_TOKEN", self.internal_token),
                            ("TENURE_SIGNING_SECRET", self.signing_secret),
                            *(("TENURE_SIGNING_SECRET_PREVIOUS", old) for old in self.signing_secret_previous)):
            if value == _PLACEHOLDER or len(value.strip()) < MIN_SECRET_CHARS:
                raise ValueError(f"{name} must be set to a real secret ({MIN_SECRET_CHARS} characters or more, e.g. "
                                 "`openssl rand -hex 32`) when TENURE_ENV=prod")
        return self

    @property
    def signing_secrets(self) -> tuple[str, ...]:
        """The keys a signed link or cursor is checked against: the current one (the only one that signs), then
        the previous ones of a rotation."""
        return (self.signing_secret, *self.signing_secret_previous)

    @property
    def json_logs(self) -> bool:
        return self.log_json if self.log_json is not None else self.env != Environment.dev

    @property
    def public_url(self) -> str:
        """Base URL of delivery's public pages, as recipients' mail clients reach them."""
        return (self.delivery_public_url or self.url_of("delivery")).rstrip("/")

    def port_of(self, service: str) -> int:
        return int(getattr(self, f"{service}_port"))

    def url_of(self, service: ServiceName) -> str:
        """Base URL other services use to reach ``service``."""
        configured = getattr(self, f"{service}_url")
        if configured:
            return str(configured).rstrip("/")
        return self.local_url(self.port_of(service))

    def local_url(self, port: int) -> str:
        """``http://HOST:PORT`` as a client on this machine reaches it. Bound to every interface (the
        image's TENURE_HOST=0.0.0.0), that is loopback: browsers refuse ``http://0.0.0.0`` links."""
        host = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(self.host, self.host)
        return f"http://{host}:{port}"

    def queue_name(self, service: ServiceName) -> str:
        return f"{self.queue_prefix}:{service}"

    def require_database_url(self) -> str:
        if not self.database_url:
            raise RuntimeError("TENURE_DATABASE_URL is not set (tenure dev starts an embedded one)")
        return self.database_url

    def require_redis_url(self) -> str:
        if not self.redis_url:
            raise RuntimeError("TENURE_REDIS_URL is not set (tenure dev starts an embedded one)")
        return self.redis_url

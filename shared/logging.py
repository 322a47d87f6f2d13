"""structlog set-up: one processor chain, JSON in production, readable console in dev.

Context (``request_id``, ``workspace_id``, ``job_id``) is bound with ``structlog.contextvars`` at the
edge and appears on every line. Never log secrets or message bodies: log ids.
"""

import logging
import sys

import structlog

from shared.settings import Settings

_configured = False


def configure_logging(settings: Settings, *, force: bool = False) -> None:
    global _configured
    if _configured and not force:
        return
    level = logging.getLevelName(settings.log_level.upper())
    if not isinstance(level, int):
        level = logging.INFO
    shared_processors: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: structlog.types.Processor
    if settings.json_logs:
        shared_processors.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[*shared_processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Route stdlib loggers (uvicorn, arq, alembic) through the same level, and with JSON on through the same
    # renderer: one JSON object per line, a traceback in its `exception` key rather than on lines of its own
    handler = logging.StreamHandler(sys.stderr)
    if settings.json_logs:
        handler.setFormatter(structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared_processors],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer]))
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    # arq logs every job start and end at INFO (crons run every few seconds), pgserver every pg_ctl command
    # with its output: keep their warnings only
    for noisy in ("uvicorn.access", "httpx", "aiosmtpd", "mail.log", "arq.worker", "arq.jobs", "pgserver",
                  "alembic"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    _configured = True

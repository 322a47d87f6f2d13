"""Alembic environment for this schema only (see shared/migrate.py)."""

from services.ingest.models import metadata
from shared.migrate import run_env

run_env(metadata)

"""Alembic environment for this schema only (see shared/migrate.py)."""

from services.campaign.models import metadata
from shared.migrate import run_env

run_env(metadata)

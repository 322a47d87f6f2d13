"""Alembic environment for this schema only (see shared/migrate.py)."""

import services.campaign.programs.models  # noqa: F401 - the programs' tables share the campaign metadata
from services.campaign.models import metadata
from shared.migrate import run_env

run_env(metadata)

"""Running the migrations on a test's database: down to a revision and up again."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

from metering.core.db import MIGRATIONS_DIR


def migrate(engine: Engine, revision: str, *, down: bool = False) -> None:
    """Upgrade (or `down`grade) the database of `engine` to `revision`, in one transaction."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        (command.downgrade if down else command.upgrade)(config, revision)

"""The SiyuDatabase block: where siyu keeps its state, and the engine to reach it."""

from __future__ import annotations

import sqlalchemy
from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from siyu.schemas.database import make_engine, upgrade


class SiyuDatabase(Block):
    """Where siyu keeps its state. Load with SiyuDatabase.load("default").

    The URL is a secret: a PostgreSQL URL carries its password.
    """

    _block_type_name = "siyu Database"
    _block_type_slug = "siyu-database"
    _description = "siyu's own database: exports, quarantine, contacts, synced tags, the outbox."

    url: SecretStr = Field(
        description=("SQLAlchemy URL, e.g. sqlite:///.siyu/siyu.db or postgresql+psycopg2://..."),
    )

    def get_engine(self) -> sqlalchemy.Engine:
        """A new engine for this database; the caller disposes of it."""
        return make_engine(self.url.get_secret_value())

    def upgrade(self) -> None:
        """Migrate this database to the newest schema siyu ships (a no-op when it is there)."""
        engine = self.get_engine()
        try:
            upgrade(engine)
        finally:
            engine.dispose()

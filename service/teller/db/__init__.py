"""Persistence: models, engine and migrations."""

from teller.db.engine import Database, make_engine
from teller.db.migrate import upgrade

__all__ = ["Database", "make_engine", "upgrade"]

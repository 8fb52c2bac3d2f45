"""The MEIJU Review store: SQLAlchemy 2 models, engines and queries (SQLite by default)."""

from db.engine import Store, alembic_config, make_engine
from db.models import Base

__all__ = ["Base", "Store", "alembic_config", "make_engine"]

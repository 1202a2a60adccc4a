"""Alembic environment: runs on the connection ``database.migrate`` hands over."""
from alembic import context

from kronos_serving.store.schema import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata,
                  version_table="kronos_alembic_version", render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()

"""The database layer: connection pool, migrations and embedded PostgreSQL."""

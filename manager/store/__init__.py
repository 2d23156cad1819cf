"""Data access: raw SQL over asyncpg, shared by the API and the executor."""

"""Data access: raw SQL over asyncpg, shared by the API and the executor.

Functions take a `Queryable` (a pool or a connection) as their first
argument so a caller can run several of them in one transaction. They return
frozen dataclasses, raise `NotFoundError` for unknown ids, `ConflictError`
for a duplicate name and `InvalidInputError` naming the field that is wrong.
"""

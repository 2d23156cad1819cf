"""The package's exception tree: one base class, one subclass per concern."""

from __future__ import annotations


class ManagerError(Exception):
    """Base class of every error the Manager raises on purpose."""


class ConfigError(ManagerError):
    """One or more settings are invalid; each problem is one line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class DatabaseError(ManagerError):
    """The database could not be reached or refused what we asked."""


class MigrationError(DatabaseError):
    """A migration file is missing, changed after it was applied, or failed."""


class ScheduleError(ManagerError, ValueError):
    """A schedule, time zone or misfire policy is not valid."""


class CallbackUrlError(ManagerError, ValueError):
    """A callback URL or the address it resolves to is not allowed."""


class NotFoundError(ManagerError):
    """The object does not exist, or the caller may not know that it does."""


class ConflictError(ManagerError):
    """A uniqueness rule was broken, such as a duplicate name in one parent."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class InvalidInputError(ManagerError, ValueError):
    """A field of a request is not valid; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field

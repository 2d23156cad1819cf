"""Shared helpers for the checks of the deployment files."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# DESIGN §4: the environment names the daemon reads, aliases included. Every
# deployment file may set only these (plus NOTIFY_SOCKET and the like, which
# systemd sets itself and no file names).
DOCUMENTED_ENV = frozenset(
    {
        "PFY_CONFIG",
        "PFY_RUN_MODE",
        "MODE",
        "PFY_ENV",
        "PFY_PORT",
        "PORT",
        "PFY_HOST",
        "PFY_CRON_METRICS_PORT",
        "PFY_DB_HOST",
        "DB_HOST",
        "PFY_DB_PORT",
        "DB_PORT",
        "PFY_DB_USER",
        "DB_USER",
        "PFY_DB_PASSWORD",
        "DB_PASSWORD",
        "PFY_DB_NAME",
        "DB_NAME",
        "PFY_DB_SSLMODE",
        "DB_SSLMODE",
        "PFY_POCKET_ID_HOST",
        "PFY_POCKET_ID_API_KEY",
        "PFY_AUTH_CLIENT_SECRET",
        "AUTH_CLIENT_SECRET",
        "PFY_LOG_LEVEL",
    }
)


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def documented_env() -> frozenset[str]:
    return DOCUMENTED_ENV


@pytest.fixture(scope="session")
def find_tool() -> Callable[[str, str], str]:
    """Return a function that finds a command or fails naming its package.

    The venv's own bin directory is searched first: pytest is often run as
    `venv/bin/pytest` without the venv on PATH, and pip-installed tools such
    as hadolint live there.
    """

    def find(command: str, install_hint: str) -> str:
        venv_bin = str(Path(sys.executable).parent)
        found = shutil.which(command, path=venv_bin) or shutil.which(command)
        if found is None:
            pytest.fail(f"`{command}` not found: {install_hint}", pytrace=False)
        return found

    return find

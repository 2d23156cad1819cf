"""The `manager` command: run (default), migrate, check-config, healthcheck.

Exit codes: 0 success, 1 a runtime failure (database unreachable, port
taken), 2 invalid configuration or usage.
"""

from __future__ import annotations

import argparse
import logging
import sys
import urllib.error
import urllib.request

import orjson

from manager import __version__
from manager.config import Settings, load_settings
from manager.errors import ConfigError, ManagerError
from manager.logs import configure_logging

log = logging.getLogger("manager.cli")

EXIT_FAILURE = 1
EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="manager",
        description="Productify Manager: control plane and trigger executor.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("run", help="run the daemon (the default)")
    commands.add_parser("migrate", help="apply database migrations and exit")
    commands.add_parser(
        "check-config", help="print the effective settings, secrets masked"
    )
    commands.add_parser(
        "healthcheck", help="exit 0 when this host's instance answers /health"
    )
    commands.add_parser("version", help="print the version")
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    command = arguments.command or "run"
    if command == "version":
        sys.stdout.write(__version__ + "\n")
        return 0

    try:
        settings = load_settings()
    except ConfigError as error:
        for problem in error.problems:
            sys.stderr.write(problem + "\n")
        return EXIT_CONFIG

    if command == "check-config":
        sys.stdout.write(
            orjson.dumps(settings.public_dict(), option=orjson.OPT_INDENT_2).decode()
            + "\n"
        )
        return 0
    if command == "healthcheck":
        return _healthcheck(settings)

    configure_logging(settings.log_level)
    try:
        if command == "migrate":
            _run(_migrate(settings))
        else:
            from manager.daemon import run_daemon

            _run(run_daemon(settings))
    except ConfigError as error:
        for problem in error.problems:
            sys.stderr.write(problem + "\n")
        return EXIT_CONFIG
    except ManagerError as error:
        log.error("manager failed", extra={"error": str(error)})
        return EXIT_FAILURE
    return 0


def _run(coroutine: object) -> None:
    import uvloop

    uvloop.run(coroutine)  # type: ignore[arg-type]


async def _migrate(settings: Settings) -> None:
    from manager.daemon import Daemon

    daemon = Daemon(settings)
    try:
        await daemon.open_database(migrate=True)
    finally:
        await daemon.stop()


def _healthcheck(settings: Settings) -> int:
    """Probe this host's /health: the API port, or the metrics port."""
    port = settings.port if settings.runs_api else settings.cron.metrics_port
    url = f"http://127.0.0.1:{port}/health"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return 0 if response.status == 200 else EXIT_FAILURE
    except (urllib.error.URLError, OSError):
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())

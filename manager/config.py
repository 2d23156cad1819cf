"""Settings: built-in defaults < config.yml < environment, validated once.

The environment names are a public contract (see the README): every setting
has a `PFY_` name derived from its path (`cron.metrics_port` is
`PFY_CRON_METRICS_PORT`), and a few have the unprefixed aliases the seed
documentation uses (`MODE`, `PORT`, `DB_HOST`, ...). A `PFY_` name beats its
alias. The result is a frozen `Settings` object; nothing else in the package
reads the environment for configuration.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from manager.errors import ConfigError

RUN_MODES = ("api", "executor", "both")
ENVIRONMENTS = ("development", "production", "test")
LOG_LEVELS = ("debug", "info", "warning", "error")
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
SYSTEM_CONFIG_FILE = Path("/etc/manager/config.yml")
MASK = "********"


@dataclass(frozen=True)
class DatabaseSettings:
    host: str | None
    port: int
    user: str
    password: str
    name: str
    sslmode: str
    migrate_on_start: bool
    pool_min_size: int
    pool_max_size: int
    command_timeout: float
    connect_timeout: float


@dataclass(frozen=True)
class CronSettings:
    metrics_port: int
    batch_size: int
    max_concurrency: int
    app_concurrency: int
    default_timeout: float
    retry_backoff: float
    retry_backoff_max: float
    lock_retry_interval: float
    lock_probe_interval: float
    lock_probe_timeout: float
    lock_session_timeout: float
    drain_timeout: float
    run_retention: float
    rescue_grace: float
    max_response_bytes: int
    catch_up_limit: int
    max_sleep: float
    lookahead: float


@dataclass(frozen=True)
class PocketIdSettings:
    host: str | None
    api_key: str
    client_id: str
    groups_claim: str
    admin_group: str
    jwks_cache_seconds: float
    jwks_refresh_interval: float


@dataclass(frozen=True)
class AuthSettings:
    client_secret: str


@dataclass(frozen=True)
class ApiSettings:
    max_body_bytes: int
    max_depth: int
    max_aliases: int
    max_page_size: int
    introspection: bool
    graphiql: bool


@dataclass(frozen=True)
class CallbackSettings:
    allowed_networks: tuple[str, ...]


@dataclass(frozen=True)
class Settings:
    run_mode: str
    env: str
    host: str
    port: int
    log_level: str
    data_dir: Path
    config_file: Path | None
    db: DatabaseSettings
    cron: CronSettings
    pocket_id: PocketIdSettings
    auth: AuthSettings
    api: ApiSettings
    callbacks: CallbackSettings

    @property
    def runs_api(self) -> bool:
        return self.run_mode in ("api", "both")

    @property
    def runs_executor(self) -> bool:
        return self.run_mode in ("executor", "both")

    @property
    def embedded_database(self) -> bool:
        return self.db.host is None

    def public_dict(self) -> dict[str, Any]:
        """The effective settings with every secret masked, for check-config."""
        data = dataclasses.asdict(self)
        for option in OPTIONS:
            if option.secret:
                section, _, key = option.path.rpartition(".")
                holder = data[section] if section else data
                if holder[key]:
                    holder[key] = MASK
        data["data_dir"] = str(self.data_dir)
        data["config_file"] = str(self.config_file) if self.config_file else None
        data["callbacks"]["allowed_networks"] = list(self.callbacks.allowed_networks)
        return data


# --- value parsers: each returns the value or raises ValueError(what is allowed)


def _text(raw: Any) -> str:
    return str(raw)


def _optional_text(raw: Any) -> str | None:
    text = str(raw).strip() if raw is not None else ""
    return text or None


def _integer(low: int, high: int) -> Callable[[Any], int]:
    def parse(raw: Any) -> int:
        try:
            value = int(str(raw).strip())
        except ValueError:
            raise ValueError(f"expected a whole number from {low} to {high}") from None
        if not low <= value <= high:
            raise ValueError(f"expected a whole number from {low} to {high}")
        return value

    return parse


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def _duration(low: float, high: float) -> Callable[[Any], float]:
    allowed = (
        f"expected seconds (or a number with ms/s/m/h/d) from {low:g}s to {high:g}s"
    )

    def parse(raw: Any) -> float:
        match = _DURATION.match(str(raw).strip().lower())
        if match is None:
            raise ValueError(allowed)
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        if not low <= seconds <= high:
            raise ValueError(allowed)
        return seconds

    return parse


def _choice(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(raw: Any) -> str:
        value = str(raw).strip().lower()
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return value

    return parse


def _boolean(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    value = str(raw).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _optional_boolean(raw: Any) -> bool | None:
    if raw is None or str(raw).strip().lower() in ("", "auto"):
        return None
    return _boolean(raw)


def _host_address(raw: Any) -> str:
    value = str(raw).strip()
    if not value or any(char.isspace() for char in value):
        raise ValueError("expected an IP address or host name")
    return value


def _http_url(raw: Any) -> str | None:
    value = _optional_text(raw)
    if value is not None and not re.match(r"^https?://[^\s/]+", value):
        raise ValueError("expected an http:// or https:// URL")
    return value.rstrip("/") if value else None


def _networks(raw: Any) -> tuple[str, ...]:
    items = raw if isinstance(raw, list | tuple) else str(raw or "").split(",")
    networks = []
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        try:
            networks.append(str(ipaddress.ip_network(text, strict=False)))
        except ValueError:
            raise ValueError(
                "expected a comma-separated list of CIDR networks"
            ) from None
    return tuple(networks)


def _path(raw: Any) -> Path:
    text = str(raw).strip()
    if not text:
        raise ValueError("expected a directory path")
    return Path(text).expanduser()


def _default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "productify-manager")


@dataclass(frozen=True)
class Option:
    """One setting: where it lives, how it is parsed, what it defaults to."""

    path: str
    parse: Callable[[Any], Any]
    default: Any
    alias: str | None = None
    secret: bool = False

    @property
    def environment_name(self) -> str:
        return "PFY_" + self.path.replace(".", "_").upper()


OPTIONS: tuple[Option, ...] = (
    Option("run_mode", _choice(RUN_MODES), "both", alias="MODE"),
    Option("env", _choice(ENVIRONMENTS), "development"),
    Option("host", _host_address, "0.0.0.0"),
    Option("port", _integer(1, 65535), 8080, alias="PORT"),
    Option("log_level", _choice(LOG_LEVELS), "info"),
    Option("data_dir", _path, None),
    Option("db.host", _optional_text, None, alias="DB_HOST"),
    Option("db.port", _integer(1, 65535), 5432, alias="DB_PORT"),
    Option("db.user", _text, "manager", alias="DB_USER"),
    Option("db.password", _text, "", alias="DB_PASSWORD", secret=True),
    Option("db.name", _text, "manager", alias="DB_NAME"),
    Option("db.sslmode", _choice(SSL_MODES), "prefer", alias="DB_SSLMODE"),
    Option("db.migrate_on_start", _boolean, True),
    Option("db.pool_min_size", _integer(1, 100), 2),
    Option("db.pool_max_size", _integer(1, 500), 10),
    Option("db.command_timeout", _duration(0.1, 3600), 10.0),
    Option("db.connect_timeout", _duration(0.1, 600), 5.0),
    Option("cron.metrics_port", _integer(1, 65535), 9090),
    Option("cron.batch_size", _integer(1, 10000), 500),
    Option("cron.max_concurrency", _integer(1, 10000), 100),
    Option("cron.app_concurrency", _integer(1, 10000), 10),
    Option("cron.default_timeout", _duration(0.1, 3600), 30.0),
    Option("cron.retry_backoff", _duration(0.01, 3600), 1.0),
    Option("cron.retry_backoff_max", _duration(0.01, 86400), 300.0),
    Option("cron.lock_retry_interval", _duration(0.05, 600), 1.0),
    Option("cron.lock_probe_interval", _duration(0.05, 600), 1.0),
    Option("cron.lock_probe_timeout", _duration(0.05, 600), 2.0),
    Option("cron.lock_session_timeout", _duration(0.2, 3600), 10.0),
    Option("cron.drain_timeout", _duration(0, 3600), 25.0),
    Option("cron.run_retention", _duration(60, 10 * 365 * 86400), 7 * 86400.0),
    Option("cron.rescue_grace", _duration(0, 86400), 30.0),
    Option("cron.max_response_bytes", _integer(0, 10 * 1024 * 1024), 65536),
    Option("cron.catch_up_limit", _integer(1, 100000), 100),
    Option("cron.max_sleep", _duration(0.05, 3600), 5.0),
    Option("cron.lookahead", _duration(0, 2), 0.5),
    Option("pocket_id.host", _http_url, None),
    Option("pocket_id.api_key", _text, "", secret=True),
    Option("pocket_id.client_id", _text, "manager"),
    Option("pocket_id.groups_claim", _text, "groups"),
    Option("pocket_id.admin_group", _text, "manager-admins"),
    Option("pocket_id.jwks_cache_seconds", _duration(1, 86400), 3600.0),
    Option("pocket_id.jwks_refresh_interval", _duration(0, 3600), 10.0),
    Option("auth.client_secret", _text, "", alias="AUTH_CLIENT_SECRET", secret=True),
    Option("api.max_body_bytes", _integer(1024, 64 * 1024 * 1024), 1024 * 1024),
    Option("api.max_depth", _integer(1, 100), 12),
    Option("api.max_aliases", _integer(1, 10000), 50),
    Option("api.max_page_size", _integer(1, 500), 500),
    Option("api.introspection", _optional_boolean, None),
    Option("api.graphiql", _optional_boolean, None),
    Option("callbacks.allowed_networks", _networks, ()),
)


def find_config_file(environ: Mapping[str, str]) -> Path | None:
    """`PFY_CONFIG`, else ./config.yml, else /etc/manager/config.yml, else none."""
    named = environ.get("PFY_CONFIG")
    if named:
        return Path(named)
    for candidate in (Path("config.yml"), SYSTEM_CONFIG_FILE):
        if candidate.is_file():
            return candidate
    return None


def read_config_file(path: Path) -> dict[str, Any]:
    """Load config.yml through dynaconf, keys lower-cased, nothing from the env."""
    from dynaconf import Dynaconf

    if not path.is_file():
        raise ConfigError([f"PFY_CONFIG: file {str(path)!r} does not exist"])
    try:
        loaded = Dynaconf(
            settings_files=[str(path)],
            environments=False,
            load_dotenv=False,
            # A prefix nobody sets: the environment is read by load_settings,
            # with the documented names and aliases, not by dynaconf.
            envvar_prefix="PFY_CONFIG_FILE_ONLY",
        ).as_dict()
    except Exception as error:
        raise ConfigError([f"{path}: cannot be read as YAML ({error})"]) from error
    loaded.pop("LOAD_DOTENV", None)
    return {key.lower(): value for key, value in loaded.items()}


def _lookup(tree: Mapping[str, Any], path: str) -> tuple[bool, Any]:
    node: Any = tree
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every setting; raise ConfigError listing each problem."""
    environ = os.environ if environ is None else environ
    config_file = find_config_file(environ)
    file_values = read_config_file(config_file) if config_file else {}

    values: dict[str, Any] = {}
    problems: list[str] = []
    for option in OPTIONS:
        source, raw = _raw_value(option, environ, file_values, config_file)
        if source is None:
            values[option.path] = option.default
            continue
        try:
            values[option.path] = option.parse(raw)
        except ValueError as error:
            shown = MASK if option.secret else raw
            problems.append(f"{source}: invalid value {shown!r}: {error}")

    if problems:
        raise ConfigError(problems)
    settings = _build(values, config_file)
    _check_combinations(settings, problems)
    if problems:
        raise ConfigError(problems)
    return settings


def _raw_value(
    option: Option,
    environ: Mapping[str, str],
    file_values: Mapping[str, Any],
    config_file: Path | None,
) -> tuple[str | None, Any]:
    """Where the operator set this option, named as they wrote it, and the value."""
    if option.environment_name in environ:
        return option.environment_name, environ[option.environment_name]
    if option.alias and option.alias in environ:
        return option.alias, environ[option.alias]
    found, raw = _lookup(file_values, option.path)
    if found:
        return f"{option.path} in {config_file}", raw
    return None, None


def _build(values: dict[str, Any], config_file: Path | None) -> Settings:
    production = values["env"] == "production"

    def section(prefix: str) -> dict[str, Any]:
        return {
            path.split(".", 1)[1]: value
            for path, value in values.items()
            if path.startswith(prefix + ".")
        }

    api = section("api")
    for switch in ("introspection", "graphiql"):
        if api[switch] is None:
            api[switch] = not production
    data_dir = values["data_dir"] or Path(_default_data_dir())
    return Settings(
        run_mode=values["run_mode"],
        env=values["env"],
        host=values["host"],
        port=values["port"],
        log_level=values["log_level"],
        data_dir=data_dir,
        config_file=config_file,
        db=DatabaseSettings(**section("db")),
        cron=CronSettings(**section("cron")),
        pocket_id=PocketIdSettings(**section("pocket_id")),
        auth=AuthSettings(**section("auth")),
        api=ApiSettings(**api),
        callbacks=CallbackSettings(**section("callbacks")),
    )


def _check_combinations(settings: Settings, problems: list[str]) -> None:
    """Rules that involve more than one setting."""
    if settings.db.pool_min_size > settings.db.pool_max_size:
        problems.append(
            "PFY_DB_POOL_MIN_SIZE: must not exceed PFY_DB_POOL_MAX_SIZE "
            f"({settings.db.pool_max_size})"
        )
    if settings.cron.app_concurrency > settings.cron.max_concurrency:
        problems.append(
            "PFY_CRON_APP_CONCURRENCY: must not exceed PFY_CRON_MAX_CONCURRENCY "
            f"({settings.cron.max_concurrency})"
        )
    _check_rescue_grace(settings.cron, problems)
    _check_lock_session_timeout(settings.cron, problems)
    if settings.env == "production":
        if settings.db.host is None:
            problems.append(
                "PFY_DB_HOST: required when PFY_ENV is production "
                "(the embedded database is for development only)"
            )
        if settings.pocket_id.host is None:
            problems.append(
                "PFY_POCKET_ID_HOST: required when PFY_ENV is production "
                "(the API refuses to run without authentication)"
            )


def _check_rescue_grace(cron: CronSettings, problems: list[str]) -> None:
    """A run's lease must outlive the time a leader needs to notice it lost the
    lock; otherwise the next leader could rescue a callback still in flight."""
    detection = cron.lock_probe_interval + cron.lock_probe_timeout
    if cron.rescue_grace <= 0 or cron.rescue_grace < detection:
        problems.append(
            f"PFY_CRON_RESCUE_GRACE: must be above 0 and at least "
            f"PFY_CRON_LOCK_PROBE_INTERVAL + PFY_CRON_LOCK_PROBE_TIMEOUT "
            f"({detection:g}s), got {cron.rescue_grace:g}s"
        )


def _check_lock_session_timeout(cron: CronSettings, problems: list[str]) -> None:
    """The server ends a silent lock session after lock_session_timeout, so a
    frozen or cut-off leader cannot hold the lock for ever. The leader itself
    must give up first, with room to spare (its last proof reached it a
    little after the server's idle clock started), and a standby's session,
    which speaks once per retry, must never look silent."""
    detection = cron.lock_probe_interval + cron.lock_probe_timeout
    least = max(2 * detection, 2 * cron.lock_retry_interval)
    if cron.lock_session_timeout < least:
        problems.append(
            f"PFY_CRON_LOCK_SESSION_TIMEOUT: must be at least twice "
            f"PFY_CRON_LOCK_PROBE_INTERVAL + PFY_CRON_LOCK_PROBE_TIMEOUT and "
            f"twice PFY_CRON_LOCK_RETRY_INTERVAL ({least:g}s), "
            f"got {cron.lock_session_timeout:g}s"
        )

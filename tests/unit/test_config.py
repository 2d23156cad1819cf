"""Settings: precedence, every documented name and alias, clear rejections."""

from __future__ import annotations

from pathlib import Path

import pytest

from manager.config import MASK, OPTIONS, load_settings
from manager.errors import ConfigError

ALIASES = {
    "MODE": ("run_mode", "executor", "executor"),
    "PORT": ("port", "18080", 18080),
    "DB_HOST": ("db.host", "db.internal", "db.internal"),
    "DB_PORT": ("db.port", "6543", 6543),
    "DB_USER": ("db.user", "svc", "svc"),
    "DB_PASSWORD": ("db.password", "hunter2", "hunter2"),
    "DB_NAME": ("db.name", "registry", "registry"),
    "DB_SSLMODE": ("db.sslmode", "require", "require"),
    "AUTH_CLIENT_SECRET": ("auth.client_secret", "s3cret", "s3cret"),
}


def value_at(settings: object, path: str) -> object:
    for part in path.split("."):
        settings = getattr(settings, part)
    return settings


def test_defaults_without_any_configuration(tmp_path: Path) -> None:
    settings = load_settings({"PFY_CONFIG": str(write(tmp_path, ""))})
    assert settings.run_mode == "both"
    assert settings.env == "development"
    assert settings.port == 8080
    assert settings.host == "0.0.0.0"
    assert settings.cron.metrics_port == 9090
    assert settings.db.host is None
    assert settings.embedded_database
    assert (settings.db.port, settings.db.user, settings.db.name) == (
        5432,
        "manager",
        "manager",
    )
    assert settings.db.sslmode == "prefer"
    assert settings.log_level == "info"
    assert settings.api.introspection is True


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_every_alias_sets_its_setting(alias: str) -> None:
    path, raw, expected = ALIASES[alias]
    settings = load_settings({alias: raw})
    assert value_at(settings, path) == expected


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_prefixed_name_beats_its_alias(alias: str) -> None:
    path, raw, _ = ALIASES[alias]
    option = next(option for option in OPTIONS if option.path == path)
    winner = {"MODE": "api", "PORT": "18081", "DB_PORT": "6000"}.get(alias, "winner")
    if alias == "DB_SSLMODE":
        winner = "disable"
    settings = load_settings({alias: raw, option.environment_name: winner})
    assert str(value_at(settings, path)) == winner


def test_documented_prefixed_names_exist() -> None:
    names = {option.environment_name for option in OPTIONS}
    documented = {
        "PFY_RUN_MODE",
        "PFY_ENV",
        "PFY_PORT",
        "PFY_HOST",
        "PFY_CRON_METRICS_PORT",
        "PFY_DB_HOST",
        "PFY_DB_PORT",
        "PFY_DB_USER",
        "PFY_DB_PASSWORD",
        "PFY_DB_NAME",
        "PFY_DB_SSLMODE",
        "PFY_POCKET_ID_HOST",
        "PFY_POCKET_ID_API_KEY",
        "PFY_AUTH_CLIENT_SECRET",
        "PFY_LOG_LEVEL",
    }
    assert documented <= names


def write(directory: Path, text: str) -> Path:
    path = directory / "config.yml"
    path.write_text(text)
    return path


def test_file_beats_defaults_and_environment_beats_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "run_mode: api\nport: 7000\ncron:\n  metrics_port: 9300\n"
        "db:\n  host: filehost\n  port: 5433\n",
    )
    from_file = load_settings({"PFY_CONFIG": str(path)})
    assert from_file.run_mode == "api"
    assert from_file.port == 7000
    assert from_file.cron.metrics_port == 9300
    assert from_file.db.host == "filehost"
    assert from_file.db.port == 5433

    overridden = load_settings(
        {"PFY_CONFIG": str(path), "PORT": "7001", "PFY_DB_HOST": "envhost"}
    )
    assert overridden.port == 7001
    assert overridden.db.host == "envhost"
    assert overridden.db.port == 5433


def test_config_file_in_working_directory_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "run_mode: executor\n")
    monkeypatch.chdir(tmp_path)
    assert load_settings({}).run_mode == "executor"


def test_missing_named_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"PFY_CONFIG": str(tmp_path / "absent.yml")})
    assert "PFY_CONFIG" in caught.value.problems[0]


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("PFY_RUN_MODE", "bogus", "expected one of api, executor, both"),
        ("MODE", "bogus", "expected one of api, executor, both"),
        ("PFY_PORT", "http", "expected a whole number from 1 to 65535"),
        ("PORT", "70000", "expected a whole number from 1 to 65535"),
        ("PFY_CRON_METRICS_PORT", "0", "expected a whole number from 1 to 65535"),
        ("PFY_DB_SSLMODE", "sometimes", "expected one of disable"),
        ("PFY_LOG_LEVEL", "loud", "expected one of debug"),
        ("PFY_ENV", "staging", "expected one of development"),
        ("PFY_CRON_DRAIN_TIMEOUT", "soon", "expected seconds"),
        ("PFY_DB_MIGRATE_ON_START", "maybe", "expected true or false"),
        ("PFY_POCKET_ID_HOST", "ftp://id", "expected an http:// or https:// URL"),
        ("PFY_CALLBACKS_ALLOWED_NETWORKS", "10.0.0.0/8,nope", "CIDR"),
    ],
)
def test_invalid_value_names_setting_value_and_allowed(
    name: str, value: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({name: value})
    [problem] = caught.value.problems
    assert problem.startswith(f"{name}: invalid value {value!r}")
    assert expected in problem


def test_invalid_value_in_file_names_the_file_key(tmp_path: Path) -> None:
    path = write(tmp_path, "cron:\n  max_concurrency: lots\n")
    with pytest.raises(ConfigError) as caught:
        load_settings({"PFY_CONFIG": str(path)})
    [problem] = caught.value.problems
    assert problem.startswith(f"cron.max_concurrency in {path}: invalid value")


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"MODE": "x", "PORT": "y"})
    assert len(caught.value.problems) == 2


def test_invalid_secret_is_not_echoed() -> None:
    # A port is not secret, but the password's parser never fails; this checks
    # the masking path through a secret whose value would be shown.
    settings = load_settings({"DB_PASSWORD": "correct horse"})
    public = settings.public_dict()
    assert public["db"]["password"] == MASK
    assert "correct horse" not in repr(public)


def test_secrets_are_masked_in_public_view() -> None:
    settings = load_settings(
        {
            "PFY_DB_PASSWORD": "pw-123",
            "PFY_POCKET_ID_API_KEY": "key-456",
            "AUTH_CLIENT_SECRET": "secret-789",
        }
    )
    text = repr(settings.public_dict())
    for secret in ("pw-123", "key-456", "secret-789"):
        assert secret not in text
    assert settings.db.password == "pw-123"


def test_production_requires_database_and_authentication() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"PFY_ENV": "production"})
    problems = "\n".join(caught.value.problems)
    assert "PFY_DB_HOST: required when PFY_ENV is production" in problems
    assert "PFY_POCKET_ID_HOST: required when PFY_ENV is production" in problems

    settings = load_settings(
        {
            "PFY_ENV": "production",
            "DB_HOST": "db",
            "PFY_POCKET_ID_HOST": "https://id.example.test",
        }
    )
    assert settings.api.introspection is False
    assert settings.api.graphiql is False


def test_durations_accept_units() -> None:
    settings = load_settings(
        {"PFY_CRON_RUN_RETENTION": "2d", "PFY_CRON_MAX_SLEEP": "500ms"}
    )
    assert settings.cron.run_retention == 2 * 86400
    assert settings.cron.max_sleep == 0.5


def test_settings_are_frozen() -> None:
    settings = load_settings({})
    with pytest.raises(AttributeError):
        settings.port = 1  # type: ignore[misc]

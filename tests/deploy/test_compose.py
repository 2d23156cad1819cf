"""compose.yaml follows the documented contract.

The file is read as plain YAML and checked against what the README promises:
services, replicas, health checks, the named volume, the environment names.
No Compose binary is available from the package registries without a build
that reaches outside them, so Compose's own validation is not run here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

MANAGER_SERVICES = ("api", "executor", "migrate")


@pytest.fixture(scope="module")
def compose(repo: Path) -> dict[str, Any]:
    # safe_load resolves the `<<: *anchor` merge keys the file uses.
    return yaml.safe_load((repo / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def test_services(services):
    assert {"postgres", "api", "executor"} <= set(services)
    assert services["postgres"]["image"] == "postgres:16"
    for name in MANAGER_SERVICES:
        assert services[name]["image"] == "productify/manager:1.0.0"


def test_api_runs_three_replicas_and_one_executor(services):
    assert services["api"]["deploy"]["replicas"] == 3
    executor_replicas = services["executor"].get("deploy", {}).get("replicas", 1)
    assert executor_replicas == 1


def test_run_modes(services):
    assert services["api"]["environment"]["MODE"] == "api"
    assert services["executor"]["environment"]["MODE"] == "executor"
    assert services["migrate"]["command"] == ["migrate"]


def test_postgres_keeps_data_in_a_named_volume(compose, services):
    volumes = services["postgres"]["volumes"]
    sources = {volume.split(":")[0] for volume in volumes}

    assert "/var/lib/postgresql/data" in {volume.split(":")[1] for volume in volumes}
    assert sources <= set(compose["volumes"]), "expected a named volume"


def test_postgres_healthcheck_uses_pg_isready(services):
    test = services["postgres"]["healthcheck"]["test"]

    assert test[0] == "CMD-SHELL"
    assert test[1].startswith("pg_isready ")


@pytest.mark.parametrize("name", ["api", "executor"])
def test_daemon_healthcheck_uses_manager_healthcheck(services, name):
    healthcheck = services[name]["healthcheck"]

    assert healthcheck["test"] == ["CMD", "manager", "healthcheck"]
    assert {"interval", "timeout", "retries"} <= set(healthcheck)


@pytest.mark.parametrize("name", MANAGER_SERVICES)
def test_daemons_wait_for_a_healthy_database(services, name):
    depends_on = services[name]["depends_on"]

    assert depends_on["postgres"] == {"condition": "service_healthy"}


@pytest.mark.parametrize("name", ["api", "executor"])
def test_daemons_start_after_migrations(services, name):
    depends_on = services[name]["depends_on"]

    assert depends_on["migrate"] == {"condition": "service_completed_successfully"}


def test_database_password_comes_from_env_file(services):
    for name in (*MANAGER_SERVICES, "postgres"):
        environment = services[name]["environment"]
        password = environment.get("DB_PASSWORD") or environment["POSTGRES_PASSWORD"]
        assert password.startswith("${DB_PASSWORD:?"), name


@pytest.mark.parametrize("name", MANAGER_SERVICES)
def test_daemon_environment_uses_documented_names(services, documented_env, name):
    names = set(services[name]["environment"])

    assert names <= documented_env, names - documented_env
    assert services[name]["environment"]["DB_HOST"] == "postgres"


def test_env_example_uses_documented_names(repo, documented_env):
    names = set()
    for line in (repo / ".env.example").read_text().splitlines():
        assignment = line.lstrip("#").strip()
        if "=" in assignment and " " not in assignment.split("=")[0]:
            names.add(assignment.split("=")[0])

    assert "DB_PASSWORD" in names
    assert names <= documented_env, names - documented_env


def test_executor_gets_longer_than_its_drain_to_stop(services):
    # Docker's default grace period (10 s) would cut the 30 s drain short.
    grace = services["executor"]["stop_grace_period"]

    assert grace.endswith("s") and int(grace[:-1]) > 30

"""The Nomad job parses as HCL and has the shape DESIGN §9 asks for.

There is no Nomad binary on the development machines or in CI, so
`nomad job validate` cannot run; python-hcl2 parses the file and these tests
check the groups, ports, checks and environment that Nomad would receive.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import hcl2
import pytest

import manager


@pytest.fixture(scope="module")
def document(repo: Path) -> dict[str, Any]:
    options = hcl2.SerializationOptions(
        with_comments=False,
        explicit_blocks=False,
        preserve_heredocs=False,
        strip_string_quotes=True,
    )
    with (repo / "nomad" / "manager.nomad.hcl").open() as file:
        return hcl2.load(file, serialization_options=options)


def labelled(blocks: list[dict[str, Any]], label: str) -> dict[str, Any]:
    """The body of the block carrying `label`, as in `group "api" { ... }`."""
    [body] = [block[label] for block in blocks if label in block]
    return body


def only(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    [body] = blocks
    return body


@pytest.fixture(scope="module")
def job(document: dict[str, Any]) -> dict[str, Any]:
    return labelled(document["job"], "manager")


@pytest.fixture(scope="module")
def api(job: dict[str, Any]) -> dict[str, Any]:
    return labelled(job["group"], "api")


@pytest.fixture(scope="module")
def executor(job: dict[str, Any]) -> dict[str, Any]:
    return labelled(job["group"], "executor")


def task_of(group: dict[str, Any]) -> dict[str, Any]:
    [task] = group["task"]
    [body] = task.values()
    return body


def environment_of(group: dict[str, Any]) -> dict[str, str]:
    """Variables set in `env` plus those the env templates write."""
    task = task_of(group)
    names = dict(only(task["env"]))
    for template in task.get("template", []):
        if template.get("env"):
            for match in re.finditer(r"^\s*([A-Z_]+)=(.*)$", template["data"], re.M):
                names[match.group(1)] = match.group(2)
    return names


def variable_default(document: dict[str, Any], reference: str) -> Any:
    name = re.fullmatch(r"\$\{var\.(\w+)\}", reference)
    assert name, f"expected a variable reference, got {reference!r}"
    return labelled(document["variable"], name.group(1))["default"]


def test_job_has_an_api_and_an_executor_group(job):
    groups = [label for group in job["group"] for label in group]

    assert job["type"] == "service"
    assert sorted(groups) == ["api", "executor"]


def test_api_group_scales_horizontally(api):
    scaling = only(api["scaling"])

    assert api["count"] == 3
    assert scaling["enabled"] is True
    assert (scaling["min"], scaling["max"]) == (2, 10)
    assert scaling["min"] <= api["count"] <= scaling["max"]


def test_api_port_is_dynamic_and_mapped_to_the_daemon_port(api):
    http = labelled(only(api["network"])["port"], "http")
    environment = environment_of(api)

    assert "static" not in http
    assert http["to"] == 8080
    # The container listens on its default port; setting PORT as well would
    # break the mapping unless it named the same port.
    assert environment.get("PORT", "8080") == "8080"
    assert environment.get("PFY_PORT", "8080") == "8080"
    assert task_of(api)["config"][0]["ports"] == ["http"]


def test_api_service_checks_health(api):
    service = only(api["service"])
    check = only(service["check"])

    assert service["name"] == "manager-api"
    assert service["port"] == "http"
    assert check["type"] == "http"
    assert check["path"] == "/health"
    assert check["interval"] == "10s"


def test_executor_group_runs_one_instance_on_static_port(executor):
    metrics = labelled(only(executor["network"])["port"], "metrics")

    assert executor["count"] == 1
    assert metrics["static"] == 9090
    assert metrics.get("to", 9090) == 9090
    assert task_of(executor)["config"][0]["ports"] == ["metrics"]


def test_executor_service_is_scraped_by_prometheus(executor):
    service = only(executor["service"])
    check = only(service["check"])

    assert service["name"] == "manager-executor-metrics"
    assert {"prometheus", "metrics"} <= set(service["tags"])
    assert check["type"] == "http"
    assert check["path"] == "/metrics"


def test_executor_update_keeps_a_single_executor(executor):
    update = only(executor["update"])

    assert update["max_parallel"] == 1
    assert update.get("canary", 0) == 0


def test_executor_may_drain_before_it_is_killed(executor):
    kill_timeout = task_of(executor)["kill_timeout"]

    assert kill_timeout.endswith("s") and int(kill_timeout[:-1]) > 30


@pytest.mark.parametrize(
    ("group_name", "mode"), [("api", "api"), ("executor", "executor")]
)
def test_tasks_run_the_manager_image_in_their_mode(document, job, group_name, mode):
    group = labelled(job["group"], group_name)
    task = task_of(group)
    environment = environment_of(group)
    image = variable_default(document, task["config"][0]["image"])

    assert task["driver"] == "docker"
    assert image == f"productify/manager:{manager.__version__}"
    assert environment.get("PFY_RUN_MODE", environment.get("MODE")) == mode


@pytest.mark.parametrize("group_name", ["api", "executor"])
def test_secrets_come_from_an_env_template(job, group_name):
    task = task_of(labelled(job["group"], group_name))
    plain = only(task["env"])
    templated = environment_of(labelled(job["group"], group_name))

    for secret in ("DB_PASSWORD", "AUTH_CLIENT_SECRET"):
        assert secret not in plain, f"{secret} must not be a plain env value"
        assert secret in templated
    assert all(template["env"] is True for template in task["template"])


@pytest.mark.parametrize("group_name", ["api", "executor"])
def test_environment_uses_documented_names(job, documented_env, group_name):
    names = set(environment_of(labelled(job["group"], group_name)))

    assert names <= documented_env, names - documented_env


@pytest.mark.parametrize("group_name", ["api", "executor"])
def test_tasks_reserve_resources(job, group_name):
    resources = only(task_of(labelled(job["group"], group_name))["resources"])

    assert resources["cpu"] > 0
    assert resources["memory"] > 0

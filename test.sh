#!/usr/bin/env bash
# Install everything the test suite needs and run it: the one test command.
#
# Debian packages (tools some tests call, such as promtool and
# systemd-analyze) are installed when missing; this needs root or sudo.
# Python packages go into ./.venv. Arguments are passed on to pytest.
set -euo pipefail
cd "$(dirname "$0")"

missing=()
if [ -f .ci/apt-packages ]; then
    while read -r package; do
        case "$package" in ''|'#'*) continue ;; esac
        dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
    done < .ci/apt-packages
fi
if [ "${#missing[@]}" -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[embedded,dev]'
exec .venv/bin/pytest "$@"

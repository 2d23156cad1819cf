"""Print the fault suite's figures as a Markdown table.

    FAULTS_REPORT=faults.jsonl ./test.sh tests/faults tests/security
    .venv/bin/python -m tests.faults.report faults.jsonl

Each line of the report is one test: its scenario, outcome and figures.
"""

from __future__ import annotations

import sys
from pathlib import Path

import orjson


def render(lines: list[dict[str, object]]) -> str:
    rows = ["| scenario | test | figures | result |", "| --- | --- | --- | --- |"]
    for line in lines:
        figures = line.get("figures") or {}
        assert isinstance(figures, dict)
        shown = ", ".join(f"{name} {_number(value)}" for name, value in figures.items())
        test = str(line.get("test", "")).rsplit("::", 1)[-1]
        rows.append(
            f"| {line.get('scenario', '')} | `{test}` | {shown} "
            f"| {line.get('outcome', '')} |"
        )
    return "\n".join(rows)


def _number(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".")
    return str(value)


def main(arguments: list[str]) -> int:
    if len(arguments) != 1:
        sys.stderr.write("usage: python -m tests.faults.report REPORT.jsonl\n")
        return 2
    text = Path(arguments[0]).read_text()
    lines = [orjson.loads(line) for line in text.splitlines() if line.strip()]
    sys.stdout.write(render(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Turn the chaos suite's measurements into the table of docs/reliability.md.

    python -m tests.chaos.report [RESULTS.json] [--write docs/reliability.md]

Prints the "Chaos suite" section's table; with --write, replaces the part of
the file between the two `chaos-table` markers (the rest of the file, other
sections included, is left as it is).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BEGIN, END = "<!-- chaos-table: begin -->", "<!-- chaos-table: end -->"

FAULTS = {
    "test_postgres_down": "PostgreSQL down",
    "test_redis_down": "Redis down (restarted empty)",
    "test_web_killed": "Daphne killed (SIGKILL), restarted",
    "test_celery_killed_mid_task": "Celery worker and beat killed mid-task",
    "test_partitioned_node": "Node partitioned (link down in its netns)",
    "test_node_state_directory_full": "Node state directory full (tmpfs)",
    "test_console_data_directory_full": "Console data directory full (tmpfs)",
    "test_node_clock_stepped": "Node clock stepped forward, then back",
}


def _length(entry: dict) -> str:
    for key, label in (
        ("outage_s", ""),
        ("partition_s", ""),
        ("full_s", ""),
        ("step_s", " step"),
    ):
        if entry.get(key) is not None:
            return f"{entry[key]:g} s{label}"
    return ""


def _number(value) -> str:
    return "" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def table(results: dict) -> str:
    machine = results["machine"]
    lines = [
        f"Measured with `{results['command']}` ({results['mode']} mode) on "
        f"{results['finished_at'][:10]}: {machine['nproc']} cores (`nproc`), "
        f"kernel {machine['kernel']} (`uname -r`), Python {machine['python']}.",
        "",
        "| fault | length | recovery (s) | samples lost | duplicates | requests failed "
        "| held | did not hold |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for test, name in FAULTS.items():
        entry = results["faults"].get(test)
        if entry is None:
            lines.append(f"| {name} | not run | | | | | | |")
            continue
        requests = (
            f"{entry['requests_failed']} of {entry['requests']}" if "requests" in entry else ""
        )
        held = "; ".join(entry.get("held", [])) or "none"
        broken = "; ".join(entry.get("broken", [])) or "none"
        if entry.get("error"):
            broken = f"the test did not finish: {entry['error']}"
        lines.append(
            f"| {name} | {_length(entry)} | {_number(entry.get('recovery_s'))} "
            f"| {_number(entry.get('samples_lost'))} | {_number(entry.get('duplicates'))} "
            f"| {requests} | {held} | {broken} |"
        )
    return "\n".join(lines) + "\n"


def write(path: Path, text: str) -> None:
    current = path.read_text()
    if BEGIN not in current or END not in current:
        raise SystemExit(f"{path} has no {BEGIN} ... {END} markers to write between")
    head, rest = current.split(BEGIN, 1)
    _old, tail = rest.split(END, 1)
    path.write_text(f"{head}{BEGIN}\n{text}{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", default=str(ROOT / ".chaos-results.json"))
    parser.add_argument("--write", metavar="FILE", help="replace the table in FILE")
    args = parser.parse_args(argv)
    text = table(json.loads(Path(args.results).read_text()))
    if args.write:
        write(Path(args.write), text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

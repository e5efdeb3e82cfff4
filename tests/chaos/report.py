"""Turn the chaos suite's measurements into the table of docs/reliability.md.

    python -m tests.chaos.report [RESULTS.json] [--write docs/reliability.md]

Prints the "Chaos suite" section's table (RESULTS defaults to
$HANGAR_CHAOS_RESULTS, else .chaos-results.json); with --write, replaces the
part of the file between the two markers of the run's mode (`chaos-table
short` or `chaos-table full`); the rest of the file, other sections included,
is left as it is.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def markers(mode: str) -> tuple[str, str]:
    return f"<!-- chaos-table {mode}: begin -->", f"<!-- chaos-table {mode}: end -->"


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


def write(path: Path, text: str, mode: str) -> None:
    begin, end = markers(mode)
    current = path.read_text()
    if begin not in current or end not in current:
        raise SystemExit(f"{path} has no {begin} ... {end} markers to write between")
    head, rest = current.split(begin, 1)
    _old, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n{text}{end}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = os.environ.get("HANGAR_CHAOS_RESULTS", str(ROOT / ".chaos-results.json"))
    parser.add_argument("results", nargs="?", default=default)
    parser.add_argument("--write", metavar="FILE", help="replace the table in FILE")
    args = parser.parse_args(argv)
    results = json.loads(Path(args.results).read_text())
    text = table(results)
    if args.write:
        write(Path(args.write), text, results["mode"])
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

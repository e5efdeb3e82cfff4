"""The bundle's requirement lists, from pyproject.toml (the one place versions live).

    requirements.py console          the console's dependencies (no dev extras)
    requirements.py agent            the agent's: no Django, no console
    requirements.py missing DIR FILE what FILE needs that DIR has no wheel for
    requirements.py pin DIR FILE     FILE's requirements and everything they pull in,
                                     pinned to the wheels in DIR, with SHA-256 hashes

`pin` runs in a virtual environment with pip (it uses pip's vendored `packaging`).
"""

from __future__ import annotations

import hashlib
import re
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# docs/agent.md: the agent package depends only on these (and redis through celery,
# capped like the console's).
AGENT_DISTRIBUTIONS = {"websockets", "nvidia-ml-py", "psutil", "celery", "redis"}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def project_dependencies() -> list[str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["dependencies"]


def distribution(requirement: str) -> str:
    return normalize(re.match(r"[A-Za-z0-9_.-]+", requirement).group(0))


def agent_dependencies() -> list[str]:
    return [r for r in project_dependencies() if distribution(r) in AGENT_DISTRIBUTIONS]


def wheel_metadata(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as wheel:
        name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
        text = wheel.read(name).decode()
    return [
        line[len("Requires-Dist: ") :]
        for line in text.splitlines()
        if line.startswith("Requires-Dist: ")
    ]


# Markers are judged for every CPython 3.11 an appliance may have (Debian bookworm's
# is 3.11.2; redis wants async-timeout below 3.11.3), not for the builder's.
TARGETS = [{"python_version": "3.11", "python_full_version": f"3.11.{n}"} for n in (0, 2, 99)]


def applies(requirement, extras: set[str]) -> bool:
    if requirement.marker is None:
        return True
    return any(
        requirement.marker.evaluate({**target, "extra": extra})
        for target in TARGETS
        for extra in extras or {""}
    )


def closure(wheelhouse: Path, requirements_file: Path) -> tuple[dict, list[str]]:
    """({name: (version, wheel)} of everything needed, [requirements with no wheel])."""
    from pip._vendor.packaging.requirements import Requirement

    wheels = {}
    for path in sorted(wheelhouse.glob("*.whl")):
        dist, version = path.name.split("-")[:2]
        wheels[normalize(dist)] = (version, path)
    todo = [
        (Requirement(line), set())
        for line in requirements_file.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    seen: dict[str, set[str]] = {}
    missing = []
    while todo:
        requirement, via_extras = todo.pop()
        if not applies(requirement, via_extras):
            continue
        name = normalize(requirement.name)
        if name not in wheels:
            missing.append(str(requirement).split(";")[0].strip())
            continue
        extras = set(requirement.extras)
        if name in seen and extras <= seen[name]:
            continue
        seen[name] = seen.get(name, set()) | extras
        todo += [(Requirement(r), extras) for r in wheel_metadata(wheels[name][1])]
    return {name: wheels[name] for name in seen}, sorted(set(missing))


def pin(wheelhouse: Path, requirements_file: Path) -> str:
    needed, missing = closure(wheelhouse, requirements_file)
    if missing:
        sys.exit(f"requirements.py: no wheel in {wheelhouse} for {', '.join(missing)}")
    lines = []
    for name in sorted(needed):
        version, path = needed[name]
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        lines.append(f"{name}=={version} --hash=sha256:{digest}")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if argv[:1] == ["console"]:
        print("\n".join(project_dependencies()))
    elif argv[:1] == ["agent"]:
        print("\n".join(agent_dependencies()))
    elif argv[:1] == ["missing"] and len(argv) == 3:
        for requirement in closure(Path(argv[1]), Path(argv[2]))[1]:
            print(requirement)
    elif argv[:1] == ["pin"] and len(argv) == 3:
        sys.stdout.write(pin(Path(argv[1]), Path(argv[2])))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

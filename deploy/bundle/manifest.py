"""Write MANIFEST.json and SHA256SUMS for a staged bundle.

    manifest.py STAGE VERSION COMMIT AARCH64_MISSING_FILE

MANIFEST.json records what the bundle carries and at which versions (Python
wheels per platform, Debian packages, the vendored static files' own record),
and the SHA-256 of every file; SHA256SUMS holds the same digests in
`sha256sum -c` form, which install.sh checks before it installs anything.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import subprocess
import sys
from pathlib import Path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def wheels(directory: Path) -> list[dict]:
    return [
        {
            "name": path.name.split("-")[0],
            "version": path.name.split("-")[1],
            "file": path.name,
            "sha256": sha256(path),
        }
        for path in sorted(directory.glob("*.whl"))
    ]


def debs(directory: Path) -> list[dict]:
    found = []
    for path in sorted(directory.glob("*.deb")):
        fields = subprocess.run(
            ["dpkg-deb", "-f", str(path), "Package", "Version", "Architecture"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        info = dict(line.split(": ", 1) for line in fields.splitlines() if ": " in line)
        found.append(
            {
                "name": info["Package"],
                "version": info["Version"],
                "architecture": info["Architecture"],
                "file": path.name,
                "sha256": sha256(path),
            }
        )
    return found


def main(stage: Path, version: str, commit: str, aarch64_missing: Path) -> None:
    files = sorted(p for p in stage.rglob("*") if p.is_file() and p.name != "SHA256SUMS")
    sums = {str(p.relative_to(stage)): sha256(p) for p in files}
    manifest = {
        "name": "hangar",
        "version": version,
        "commit": commit,
        "built": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": "CPython 3.11",
        "platforms": ["manylinux x86_64", "manylinux aarch64 (where PyPI has wheels)"],
        "wheels": {
            "x86_64": wheels(stage / "wheelhouse"),
            "aarch64": wheels(stage / "wheelhouse-aarch64"),
            "aarch64_missing": aarch64_missing.read_text().split(),
        },
        "system_packages": (stage / "system-packages.txt").read_text().split(),
        "debs": debs(stage / "debs") if (stage / "debs").is_dir() else [],
        "static_vendor": (stage / "app/static/vendor/VERSIONS.md").read_text(),
        "files": sums,
    }
    (stage / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    sums["MANIFEST.json"] = sha256(stage / "MANIFEST.json")
    (stage / "SHA256SUMS").write_text("".join(f"{d}  {n}\n" for n, d in sorted(sums.items())))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4]))

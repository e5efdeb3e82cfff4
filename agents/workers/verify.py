"""Model files: under an allowed root, and exactly the bytes the console registered.

Paths are checked twice: lexically (absolute, no `..`) and after resolving
symlinks (`os.path.realpath`, compared with `os.path.commonpath`), so a link
inside the root that points out of it is refused rather than followed.

A verification is remembered node-wide (`VerifiedRecords`): one record per
model key in `<state-dir>/verified/<key>.json` with the resolved directory and
each file's stamps, so the next worker of the same files does not hash them
again while no stamp changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from agents.files import write_private

CHUNK = 4 * 2**20  # large reads: hashing runs near disk speed, progress stays fine-grained

Progress = Callable[[int, int, str], None]  # (done_bytes, total_bytes, file)


class VerificationError(Exception):
    """The model cannot be used; str() names the file and says what to do."""


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def check_model_dir(path: str, roots: Sequence[str]) -> str:
    """The model directory, resolved, if it lies under one of `roots`."""
    if not os.path.isabs(path):
        raise VerificationError(f"model path {path!r} must be absolute")
    if ".." in path.split("/"):
        raise VerificationError(f"model path {path!r} must not contain '..'")
    real_roots = [os.path.realpath(r) for r in roots]
    lexical = os.path.normpath(path)
    # Lexically under a root as written or as resolved (the root may be a link).
    if not any(_inside(lexical, r) for r in {*map(os.path.normpath, roots), *real_roots}):
        raise VerificationError(
            f"model path {path} is outside the allowed model roots ({', '.join(roots)}); "
            "start the agent with --model-root for that directory"
        )
    real = os.path.realpath(path)
    if not any(_inside(real, r) for r in real_roots):
        raise VerificationError(
            f"model path {path} resolves to {real}, outside the allowed model roots: "
            "a symlink leaves the root"
        )
    if not os.path.isdir(real):
        raise VerificationError(f"model directory {path} does not exist on this node")
    return real


def check_model_file(model_dir: str, relative: str, roots: Sequence[str]) -> str:
    """The resolved path of one of the model's files, refused if it escapes."""
    if os.path.isabs(relative) or ".." in relative.split("/"):
        raise VerificationError(f"model file {relative!r} must be a relative path without '..'")
    joined = os.path.join(model_dir, relative)
    real = os.path.realpath(joined)
    if not any(_inside(real, os.path.realpath(r)) for r in roots):
        raise VerificationError(
            f"model file {relative} resolves to {real}, outside the allowed model roots: "
            "a symlink leaves the root"
        )
    return real


def sha256_file(path: str, on_chunk: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buffer)
            if not n:
                break
            digest.update(view[:n])
            if on_chunk is not None:
                on_chunk(n)
    return digest.hexdigest()


def spec_model_key(model: dict[str, Any]) -> str:
    """Identifies what was verified: the directory and each file's expected digest."""
    canonical = json.dumps(
        {"path": model["path"], "files": sorted((f["path"], f["sha256"]) for f in model["files"])},
        sort_keys=True,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def file_stamps(model_dir: str, files: Sequence[dict[str, Any]]) -> dict[str, list[int]]:
    """[size, mtime_ns, inode, device, ctime_ns] per file: a verification holds while these do.

    ctime cannot be set from user space: a rewrite that restores the mtime
    (`touch -r`, `cp -p`/`rsync -a` onto another disk) still changes it.
    """
    stamps = {}
    for f in files:
        st = os.stat(os.path.join(model_dir, f["path"]))
        stamps[f["path"]] = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev, st.st_ctime_ns]
    return stamps


def verify_model(
    model: dict[str, Any],
    roots: Sequence[str],
    progress: Progress | None = None,
    cancelled: Callable[[], bool] = lambda: False,
) -> str:
    """Check the path and every file's SHA-256; return the resolved model directory.

    Raises VerificationError naming the first file that is missing, of the
    wrong size or of the wrong digest.
    """
    model_dir = check_model_dir(model["path"], roots)
    files = model["files"]
    paths = []
    total = 0
    for f in files:
        real = check_model_file(model_dir, f["path"], roots)
        try:
            size = os.stat(real).st_size
        except FileNotFoundError:
            raise VerificationError(
                f"model file {f['path']} is missing from {model['path']}"
            ) from None
        if f.get("size") is not None and size != f["size"]:
            raise VerificationError(
                f"model file {f['path']} is {size} bytes, the model version says {f['size']}: "
                "the copy on this node is incomplete or different"
            )
        paths.append(real)
        total += size
    done = 0

    def on_chunk(n: int) -> None:
        nonlocal done
        done += n
        if cancelled():
            raise VerificationError("verification cancelled: the worker was stopped")
        if progress is not None:
            progress(done, total, current)

    for f, real in zip(files, paths, strict=True):
        current = f["path"]
        if progress is not None:
            progress(done, total, current)
        digest = sha256_file(real, on_chunk)
        if digest != f["sha256"]:
            raise VerificationError(
                f"model file {f['path']} has SHA-256 {digest}, the model version says "
                f"{f['sha256']}: the file on this node is corrupted or different; copy it again"
            )
    return model_dir


_KEY = re.compile(r"[0-9a-f]{64}")


class VerifiedRecords:
    """Node-wide record of verified models: `<directory>/<model key>.json`.

    A record holds the model key (`spec_model_key`), the resolved model
    directory and `file_stamps` taken when the hash was checked. It is trusted
    only while the path checks still pass, the directory resolves to the same
    place and every stamp is equal; anything unreadable counts as no record.
    Records are written atomically with mode 0600 and removed when a
    verification of their key fails.
    """

    def __init__(self, directory: Path | str) -> None:
        self.dir = Path(directory)

    def path(self, key: str) -> Path:
        if not _KEY.fullmatch(key):  # keys are SHA-256 hex digests: never a path
            raise ValueError(f"not a model key: {key!r}")
        return self.dir / f"{key}.json"

    def read(self, key: str) -> dict[str, Any] | None:
        """The record for `key` if it is well formed; None otherwise."""
        try:
            with open(self.path(key), encoding="utf-8") as f:
                record = json.load(f)
        except (OSError, ValueError, RecursionError):
            return None
        if (
            not isinstance(record, dict)
            or record.get("key") != key
            or not isinstance(record.get("model_dir"), str)
            or not isinstance(record.get("stamps"), dict)
        ):
            return None
        return record

    def lookup(self, key: str, model: dict[str, Any], roots: Sequence[str]) -> str | None:
        """The resolved model directory if `model` is verified and unchanged since; else None."""
        record = self.read(key)
        if record is None:
            return None
        files = model["files"]
        try:
            model_dir = check_model_dir(model["path"], roots)
            if model_dir != record["model_dir"]:
                return None
            for f in files:
                check_model_file(model_dir, f["path"], roots)
            stamps = file_stamps(model_dir, files)
        except (VerificationError, OSError):
            return None  # verify_model says what is wrong
        if stamps != record["stamps"]:
            return None
        for f in files:
            if f.get("size") is not None and stamps[f["path"]][0] != f["size"]:
                return None
        return model_dir

    def write(self, key: str, model: dict[str, Any], model_dir: str, stamps: dict) -> None:
        path = self.path(key)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        record = {
            "key": key,
            "path": model["path"],
            "model_dir": model_dir,
            "stamps": stamps,
            "verified_at": time.time(),
        }
        write_private(path, json.dumps(record))

    def forget(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(key).unlink()

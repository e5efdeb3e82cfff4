"""Model paths must stay under HANGAR_MODEL_ROOTS; nothing outside is followed."""

from __future__ import annotations

import os
from pathlib import Path

from django.conf import settings
from django.utils.translation import gettext_lazy as _

from apps.core.i18n import lazy_message


class PathRefused(ValueError):
    """The path is outside every allowed root, or leaves one through `..` or a symlink."""


def check_model_path(raw: str, roots: list[str] | None = None) -> Path:
    """Return the real path of `raw` if it is a directory inside an allowed root."""
    roots = roots if roots is not None else settings.MODEL_ROOTS
    if not raw or "\x00" in raw:
        raise PathRefused(_("Give the absolute path of the model's directory."))
    path = Path(raw)
    if not path.is_absolute():
        raise PathRefused(
            lazy_message(
                _("%(path)s is not absolute; give the full path under a model root."), path=raw
            )
        )
    if ".." in path.parts:
        raise PathRefused(
            lazy_message(_("%(path)s contains '..'; give the path without it."), path=raw)
        )
    real_roots = [os.path.realpath(root) for root in roots]
    lexical = next((root for root in roots if _inside(str(path), os.path.normpath(root))), None)
    if lexical is None:
        raise PathRefused(
            lazy_message(
                _("%(path)s is outside the allowed model roots (%(roots)s)."),
                path=raw,
                roots=", ".join(roots),
            )
        )
    real = os.path.realpath(path)
    if not any(_inside(real, root) for root in real_roots):
        raise PathRefused(
            lazy_message(
                _("%(path)s leads outside the model roots through a symbolic link."), path=raw
            )
        )
    if not os.path.isdir(real):
        raise PathRefused(
            lazy_message(_("%(path)s is not a directory the console can read."), path=raw)
        )
    return Path(real)


def _inside(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:
        return False


def list_files(directory: Path) -> list[Path]:
    """Every regular file below `directory`, refusing symlinks that leave it."""
    files = []
    root = str(directory)
    for current, dirs, names in os.walk(directory, followlinks=False):
        dirs.sort()
        for name in sorted(names):
            candidate = Path(current) / name
            if not _inside(os.path.realpath(candidate), root):
                raise PathRefused(
                    lazy_message(
                        _("%(path)s is a symbolic link leading outside the model directory."),
                        path=str(candidate),
                    )
                )
            if candidate.is_file():
                files.append(candidate)
    return files

"""The agent runs on GPU hosts without the console: it may not import it."""

from __future__ import annotations

import ast
from pathlib import Path

import agents

FORBIDDEN = ("django", "rest_framework", "channels", "apps", "console")


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_agent_module_imports_django_or_the_console():
    offenders = []
    for path in sorted(Path(agents.__file__).parent.rglob("*.py")):
        for name in imported_modules(path):
            if name.split(".")[0] in FORBIDDEN:
                offenders.append(f"{path.name}: {name}")
    assert offenders == []


def test_the_checker_would_notice_a_forbidden_import(tmp_path):
    module = tmp_path / "bad.py"
    module.write_text("from apps.inventory.models import Node\nimport django.conf\n")
    assert imported_modules(module) == {"apps.inventory.models", "django.conf"}

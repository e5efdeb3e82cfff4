"""The import rules of docs/architecture.md ("Imports"), checked on every module under apps/.

Each module is parsed with `ast`; imports at module level and inside functions
both count. The map, as data:

- Every app's *core modules* (models, services and the like: everything that is
  not an entry point) import only the apps listed for it in CORE_IMPORTS. That
  graph has no cycle, so an app never reaches itself through others.
- *Entry points* (ENTRY: pages, API, websocket consumers, Celery tasks, template
  tags, management commands) are where the outside world comes in; nothing but
  other entry points and the URL/routing wiring in console/ imports them, so
  they may use any app's core modules and the shared bases (SHARED_ENTRY).
- A core module never imports an entry point: not another app's, and of its own
  app only its Celery tasks (a service queues them), except as OWN_ENTRY allows.
- No import of another app, or of console/, inside a function, except as
  FUNCTION_LEVEL allows, each with its reason; `console` only as CONSOLE allows.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APPS = ROOT / "apps"

# What each app's core modules may import, lowest layer first (docs/architecture.md).
CORE_IMPORTS: dict[str, set[str]] = {
    "core": set(),
    "audit": {"core"},
    "accounts": {"core", "audit"},
    "inventory": {"core", "audit", "accounts"},
    "registry": {"core", "audit"},
    "telemetry": {"core", "audit", "accounts", "inventory"},
    "alerts": {"core", "audit", "accounts", "inventory", "telemetry"},
    "deployments": {"core", "audit", "accounts", "inventory", "registry", "telemetry", "alerts"},
    "gateway": {
        "core",
        "audit",
        "accounts",
        "inventory",
        "registry",
        "telemetry",
        "alerts",
        "deployments",
    },
}

# Entry points, by path inside the app (a folder name covers the folder).
ENTRY = (
    "views.py",
    "pages.py",
    "urls.py",
    "consumers.py",
    "tasks.py",
    "viewsets.py",
    "api",
    "templatetags",
    "management",
)

# Entry points other apps' entry points build on.
SHARED_ENTRY = {"apps.core.viewsets", "apps.core.pages", "apps.core.templatetags.console"}

# A core module importing its own app's entry point, beyond its Celery tasks.
OWN_ENTRY = {
    ("apps.alerts.services", "apps.alerts.api.serializers"): (
        "the console's live alert push sends an alert in the API's shape; the "
        "serializers import only the app's models and evaluation"
    ),
}

# Imports of other apps or console/ inside a function, each with its reason.
FUNCTION_LEVEL = {
    ("apps.core.apps", "console.celery"): (
        "binds shared tasks to the console's Celery app once the apps are loaded; "
        "console.celery reads settings and discovers every app's tasks"
    ),
    ("apps.core.health", "console.celery"): "as core.apps: the Celery app, asked only by /healthz",
}

# The only modules of console/ an app may import, and which modules may.
CONSOLE = {
    # The Celery app: bound at start-up, pinged by /healthz, and sending node commands.
    "console.celery": {"apps.core.apps", "apps.core.health", "apps.inventory.commands"},
    "console.api": {"apps.core.views"},  # the API root lists the router's endpoints
}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, e.g. apps.inventory.services
    target: str  # what it imports, e.g. apps.alerts.services
    in_function: bool
    line: int

    @property
    def where(self) -> str:
        return f"{self.module}:{self.line} imports {self.target}"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def app_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "apps" and len(parts) > 1 else None


def is_entry(module: str) -> bool:
    parts = module.split(".")
    inside = parts[2:]
    return bool(inside) and (f"{inside[0]}.py" in ENTRY or inside[0] in ENTRY)


def imports_of(path: Path, module: str | None = None) -> list[Import]:
    tree = ast.parse(path.read_text(), filename=str(path))
    module = module or module_name(path)
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend(Import(module, a.name, in_function, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                # `from apps.telemetry import live` imports the module apps.telemetry.live.
                for alias in child.names:
                    target = child.module
                    if child.module.count(".") == 1 and app_of(child.module):
                        target = f"{child.module}.{alias.name}"
                    found.append(Import(module, target, in_function, child.lineno))
            visit(child, nested)

    visit(tree, False)
    return found


def all_imports() -> list[Import]:
    modules = [p for p in APPS.rglob("*.py") if "migrations" not in p.parts]
    assert len(modules) > 50, "apps/ not found"
    return [i for path in sorted(modules) for i in imports_of(path)]


def cross_app(imports: list[Import]) -> list[Import]:
    return [
        i for i in imports if app_of(i.module) and (i.target.startswith("console") or _other_app(i))
    ]


def _other_app(i: Import) -> bool:
    return app_of(i.target) is not None and app_of(i.target) != app_of(i.module)


def test_every_app_is_on_the_map():
    apps = {p.name for p in APPS.iterdir() if (p / "apps.py").exists()}
    assert apps == set(CORE_IMPORTS)


def test_the_map_has_no_cycle():
    done: set[str] = set()

    def below(app: str, path: tuple[str, ...]) -> None:
        assert app not in path, f"cycle: {' -> '.join((*path, app))}"
        for lower in CORE_IMPORTS[app]:
            if lower not in done:
                below(lower, (*path, app))
        done.add(app)

    for app in CORE_IMPORTS:
        below(app, ())


def test_core_modules_import_only_the_apps_below_them():
    wrong = [
        i.where
        for i in cross_app(all_imports())
        if _other_app(i) and not is_entry(i.module)
        if app_of(i.target) not in CORE_IMPORTS[app_of(i.module)]
    ]
    assert not wrong, "not on the map (docs/architecture.md, Imports):\n" + "\n".join(wrong)


def test_core_modules_import_no_entry_points():
    wrong = []
    for i in all_imports():
        if not app_of(i.module) or not app_of(i.target) or is_entry(i.module):
            continue
        if not is_entry(i.target) or (i.module, i.target) in OWN_ENTRY:
            continue
        own_tasks = app_of(i.target) == app_of(i.module) and i.target.endswith(".tasks")
        if not own_tasks:
            wrong.append(i.where)
    assert not wrong, "a core module imports an entry point:\n" + "\n".join(wrong)


def test_entry_points_import_other_apps_entry_points_only_for_the_shared_bases():
    wrong = [
        i.where
        for i in cross_app(all_imports())
        if _other_app(i) and is_entry(i.module) and is_entry(i.target)
        if i.target not in SHARED_ENTRY
    ]
    assert not wrong, "\n".join(wrong)


def test_no_app_imports_another_app_inside_a_function_without_a_reason():
    wrong = [
        i.where
        for i in cross_app(all_imports())
        if i.in_function and (i.module, _console_module(i.target) or i.target) not in FUNCTION_LEVEL
    ]
    assert not wrong, "move these to the top of the module, or break the cycle:\n" + "\n".join(
        wrong
    )


def test_apps_import_console_only_where_the_map_says():
    wrong = [
        i.where
        for i in cross_app(all_imports())
        if i.target.startswith("console")
        if i.module not in CONSOLE.get(_console_module(i.target), set())
    ]
    assert not wrong, "\n".join(wrong)


def _console_module(target: str) -> str | None:
    if not target.startswith("console"):
        return None
    return ".".join(target.split(".")[:2])


def test_the_rules_see_function_level_imports(tmp_path):
    """The checker itself: an import inside a function (even nested) is found as one."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from apps.audit import recorder\n"
        "def f():\n"
        "    def g():\n"
        "        from apps.alerts.services import evaluate_values\n"
    )
    found = [(i.target, i.in_function) for i in imports_of(sample, "apps.inventory.sample")]
    assert found == [("apps.audit.recorder", False), ("apps.alerts.services", True)]


# Modules of other apps the gateway process may import, and what they may import
# beyond the standard library (checked below).
GATEWAY_SHARED = {"apps.core.forwarded": set(), "apps.core.redis_target": {"redis"}}


def test_the_gateway_process_imports_nothing_of_django_or_other_apps():
    """apps/gateway/proxy is the hangar-gateway process: it serves from Redis alone."""
    root = Path(__file__).resolve().parents[1] / "apps" / "gateway" / "proxy"
    wrong = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from apps.core import forwarded` imports apps.core.forwarded.
                names = [f"{node.module}.{alias.name}" for alias in node.names]
            for name in names:
                top = name.split(".")[0]
                shared = any(name == s or name.startswith(f"{s}.") for s in GATEWAY_SHARED)
                if top in ("django", "rest_framework", "channels", "console", "celery") or (
                    top == "apps" and not name.startswith("apps.gateway.proxy") and not shared
                ):
                    wrong.append(f"{path.name}:{node.lineno} imports {name}")
    assert not wrong, wrong


def test_what_the_gateway_shares_imports_only_the_standard_library_and_redis():
    """forwarded.py (the client address) and redis_target.py (where Redis is): decided
    alike by console and gateway."""
    import sys

    for module, allowed in GATEWAY_SHARED.items():
        path = ROOT / (module.replace(".", "/") + ".py")
        names = [i.target.split(".")[0] for i in imports_of(path)]
        assert names, f"no imports found in {path}"
        wrong = [
            n
            for n in names
            if n not in sys.stdlib_module_names and n != "__future__" and n not in allowed
        ]
        assert not wrong, (module, wrong)

"""The production layout's files say only what is true: the systemd units, the
environment file's variables, the packages the README names.

The units run for real in deploy/tests/airgap.sh (CI, as root, in a clean root);
here they are checked with systemd's own verifier and against the hardening the
layout promises (docs/install.md).
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import processes

ROOT = processes.ROOT
UNITS = ROOT / "deploy" / "systemd"
CONSOLE_SERVICES = [
    "hangar-web@.service",
    "hangar-worker.service",
    "hangar-beat.service",
    "hangar-gateway.service",
]
SERVICES = [*CONSOLE_SERVICES, "hangar-agent.service"]


def directives(path: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


def variables_read_by_the_code() -> set[str]:
    """HANGAR_* names the console's settings, the gateway and the agent read."""
    names = set()
    readers = [
        *(ROOT / "console").glob("*.py"),
        ROOT / "apps/gateway/proxy/config.py",
        ROOT / "apps/core/redis_target.py",  # HANGAR_REDIS_*, for console and gateway
        *(ROOT / "agents").glob("*.py"),
    ]
    for path in readers:
        text = path.read_text()
        # config.raw("X"), config.integer("X", ...), _number("X", ...), bind("X", ...),
        # console/sso.py's _url("X")
        names |= {
            "HANGAR_" + n
            for n in re.findall(
                r'\b(?:raw|read|boolean|integer|listing|bind|choice|_choice|_raw|_number|_bind|_networks|_url)\(\s*"([A-Z0-9_]+)"',
                text,
            )
        }
        names |= set(re.findall(r'"(HANGAR_[A-Z0-9_]+)"', text))
        # config.bind()'s default name
        names |= {"HANGAR_" + n for n in re.findall(r'name: str = "([A-Z0-9_]+)"', text)}
    return names


def env_example_names() -> list[str]:
    text = (ROOT / "deploy/hangar.env.example").read_text()
    return re.findall(r"^#? ?(HANGAR_[A-Z0-9_]+)=", text, re.M)


def test_the_env_example_names_only_variables_the_code_reads():
    unknown = sorted(set(env_example_names()) - variables_read_by_the_code())
    assert unknown == []


def test_the_env_example_documents_every_console_and_gateway_variable():
    documented = set(env_example_names())
    # Read by the agent alone (its unit sets it; the clock seam is the chaos
    # suite's, docs/agent.md) or by engines the agent starts.
    not_console = {
        "HANGAR_AGENT_STATE_DIR",
        "HANGAR_ENGINE_API_KEY",
        "HANGAR_AGENT_CLOCK_OFFSET_FILE",
    }
    missing = sorted(variables_read_by_the_code() - documented - not_console)
    assert missing == []


@pytest.mark.parametrize("unit", SERVICES)
def test_each_service_runs_hardened_as_its_own_user(unit):
    found = directives(UNITS / unit)
    assert found["User"] == ["hangar-agent" if unit == "hangar-agent.service" else "hangar"]
    assert found["Restart"] == ["on-failure"]
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert found[key] == ["yes"], key
    assert found["ProtectSystem"] == ["strict"]
    writable = " ".join(found.get("ReadWritePaths", [])).split()
    # Only the state directory each one owns; the gateway writes nothing.
    expected = {
        "hangar-gateway.service": [],
        "hangar-agent.service": ["/var/lib/hangar-agent"],
    }.get(unit, ["/var/lib/hangar"])
    assert writable == expected


@pytest.mark.parametrize("unit", CONSOLE_SERVICES)
def test_console_services_read_the_one_environment_file(unit):
    assert directives(UNITS / unit)["EnvironmentFile"] == ["/etc/hangar/hangar.env"]


def test_the_agent_does_not_read_the_consoles_secrets():
    assert "EnvironmentFile" not in directives(UNITS / "hangar-agent.service")


def test_the_target_starts_every_console_service():
    wanted = directives(UNITS / "hangar.target")["Wants"][0].split()
    assert {re.sub(r"@\d+", "@", w) for w in wanted} == set(CONSOLE_SERVICES)


def test_systemd_analyze_verifies_the_units(tmp_path):
    """systemd's verifier on the units, with ExecStart pointing at this checkout's
    .venv (it checks that each command exists)."""
    assert shutil.which("systemd-analyze"), "systemd-analyze missing: apt-get install systemd"
    for unit in UNITS.iterdir():
        text = unit.read_text().replace("/opt/hangar/venv", str(processes.ROOT / ".venv"))
        text = text.replace("/opt/hangar-agent", str(processes.ROOT / ".venv"))
        (tmp_path / unit.name).write_text(text)
    (tmp_path / "hangar-web@1.service").write_text((tmp_path / "hangar-web@.service").read_text())
    names = [
        "hangar.target",
        "hangar-web.socket",
        "hangar-web@1.service",
        *CONSOLE_SERVICES[1:],
        "hangar-agent.service",
    ]
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *(str(tmp_path / n) for n in names)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""


def test_systemd_analyze_catches_a_broken_unit(tmp_path):
    """The verifier above is not a formality: a unit whose command is missing fails."""
    broken = (UNITS / "hangar-gateway.service").read_text()
    (tmp_path / "hangar-gateway.service").write_text(broken)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(tmp_path / "hangar-gateway.service")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "/opt/hangar/venv/bin/hangar-gateway" in result.stderr


def test_the_readme_names_exactly_what_the_clean_root_installs():
    script = (ROOT / "deploy/tests/clean-root.sh").read_text()
    packages = re.search(r"^README_PACKAGES=\(([^)]*)\)", script, re.M).group(1).split()
    readme = (ROOT / "README.md").read_text()
    line = next(line for line in readme.splitlines() if "apt-get install" in line)
    assert line.split("apt-get install", 1)[1].split() == ["-y", *packages]


def test_the_agent_requirements_hold_no_django():
    result = subprocess.run(
        [str(processes.BIN / "python"), "deploy/bundle/requirements.py", "agent"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    names = {re.match(r"[A-Za-z0-9_.-]+", line).group(0).lower() for line in result.stdout.split()}
    assert names == {"celery", "redis", "websockets", "nvidia-ml-py", "psutil"}


def load(path: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(Path(path).stem, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hangar_manage_reads_the_env_file_as_systemd_does_not_as_a_shell():
    parse = load("deploy/envfile.py").parse
    text = (
        "# a comment\n\n"
        "HANGAR_LDAP_USER_FILTER=(&(objectClass=person)(uid=%(user)s))\n"
        'HANGAR_EMAIL_FROM="Hangar <hangar@example.org>"\n'
        "HANGAR_SECRET_KEY=\n"
    )
    assert parse(text) == {
        "HANGAR_LDAP_USER_FILTER": "(&(objectClass=person)(uid=%(user)s))",
        "HANGAR_EMAIL_FROM": "Hangar <hangar@example.org>",
        "HANGAR_SECRET_KEY": "",
    }


def test_the_bundle_takes_dependencies_for_every_python_3_11_not_the_builders():
    """redis needs async-timeout below 3.11.3 (Debian bookworm has 3.11.2); a bundle
    built on a newer 3.11 once left it out, and the offline install failed."""
    from pip._vendor.packaging.requirements import Requirement

    applies = load("deploy/bundle/requirements.py").applies
    assert applies(Requirement('async-timeout>=4.0.3; python_full_version < "3.11.3"'), set())
    assert not applies(Requirement('tomli; python_version < "3.11"'), set())
    assert applies(Requirement('redis; extra == "redis"'), {"redis"})
    assert not applies(Requirement('redis; extra == "redis"'), set())


def test_system_packages_refuses_an_unknown_group_in_one_line():
    result = subprocess.run(
        ["deploy/system-packages.sh", "gpu"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "deploy/system-packages.sh: unknown group 'gpu' (build, test, ci, chaos, ha, runtime)"
    ]


def test_the_runtime_packages_are_what_the_bundle_lists_for_install_sh():
    result = subprocess.run(
        ["deploy/system-packages.sh", "--list", "runtime"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    # docs/install.md names them for the IT person; keep the two in step.
    listed = " ".join(result.stdout.split())
    assert f"`{listed}`" in (ROOT / "docs/install.md").read_text()
    assert f"`{listed}`" in (ROOT / "docs/install.zh.md").read_text()

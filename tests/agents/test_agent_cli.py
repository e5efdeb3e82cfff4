"""`hangar-agent` arguments and exit codes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from agents.cli import default_state_dir
from tests.agents.agent_helpers import REPO_ROOT, WAIT_S, agent_command, agent_env


def run_agent(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        agent_command(*args),
        env=agent_env(**env),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), "the following arguments are required: COMMAND"),
        (("launch",), "invalid choice: 'launch'"),
        (("run", "--interval", "0"), "must be between 0.1 and 3600 seconds"),
        (("run", "--interval", "soon"), "'soon' is not a number of seconds"),
        (("run", "--simulate", "65"), "must be between 0 and 64"),
        (("run", "--simulate", "two"), "'two' is not a whole number"),
        (("run", "--bogus"), "unrecognized arguments: --bogus"),
        (("enroll", "--token", "t"), "the following arguments are required: --console"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_code_2(args, expected):
    result = run_agent(*args)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert expected in line


def test_running_without_a_credential_says_to_enroll(tmp_path):
    result = run_agent("run", "--simulate", "1", "--no-celery", "--state-dir", str(tmp_path))
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert "no credential at" in line and "hangar-agent enroll" in line


def test_the_state_dir_comes_from_the_environment_when_set(monkeypatch, tmp_path):
    monkeypatch.setenv("HANGAR_AGENT_STATE_DIR", str(tmp_path / "x"))
    assert default_state_dir() == tmp_path / "x"


def test_the_state_dir_follows_the_user_when_not_root(monkeypatch, tmp_path):
    monkeypatch.delenv("HANGAR_AGENT_STATE_DIR", raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    assert default_state_dir() == tmp_path / ".local" / "state" / "hangar-agent"
    monkeypatch.setattr("os.geteuid", lambda: 0)
    assert default_state_dir() == Path("/var/lib/hangar-agent")

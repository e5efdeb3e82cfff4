#!/bin/bash
# The part of airgap.sh that runs inside the root, in the network namespace.
set -euo pipefail
say() { echo "airgap: $*"; }
bundle=$1
# The namespace really is offline: nothing but loopback answers.
if python3 -c 'import socket; socket.create_connection(("151.101.2.132", 80), timeout=3)' 2>/dev/null; then
  say "the network namespace reaches the outside; this test proves nothing there" && exit 1
fi

start_services() {
  # What the appliance's own services would be: PostgreSQL and Redis, started by
  # hand (systemd does not run in the root).
  pg=$(ls /etc/postgresql | sort -V | tail -1)
  pg_ctlcluster --skip-systemctl-redirect "$pg" main start
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --logfile /tmp/redis.log
}

cd /root && tar -xzf "$bundle"
dir=$(ls -d /root/hangar-*/ | head -1)
t0=$SECONDS
if [[ ${AIRGAP_FROM_DEBS:-false} == true ]]; then
  # The packages come from the bundle: a first run installs them and then stops at
  # the database, which is not running yet (as on a real appliance: start it, run again).
  if "$dir/install.sh" --local-database >/tmp/install-first.log 2>&1; then
    say "install.sh went on without a running PostgreSQL" && exit 1
  fi
  cat /tmp/install-first.log
  grep -q "PostgreSQL does not answer on this host" /tmp/install-first.log
  start_services
else
  start_services
fi
"$dir/install.sh" --local-database | tee /tmp/install.log
say "console installed in $((SECONDS - t0)) s"

# This test talks plain HTTP on loopback: TLS is nginx's (docs/tls.md, its own tests).
sed -i -e 's|^HANGAR_HTTPS=.*|HANGAR_HTTPS=false|' \
  -e 's|^HANGAR_ALLOWED_HOSTS=.*|HANGAR_ALLOWED_HOSTS=127.0.0.1,localhost|' \
  -e 's|^HANGAR_PUBLIC_URL=.*|HANGAR_PUBLIC_URL=http://127.0.0.1:8000|' /etc/hangar/hangar.env

# The installed units as systemd reads them (ExecStart paths exist now).
if ! command -v systemd-analyze >/dev/null; then
  say "systemd-analyze is not in this root (the packages came from the bundle); skipping verify"
else
systemd-analyze verify --man=no /etc/systemd/system/hangar.target /etc/systemd/system/hangar-web.socket \
  /etc/systemd/system/hangar-web@1.service /etc/systemd/system/hangar-worker.service \
  /etc/systemd/system/hangar-beat.service /etc/systemd/system/hangar-gateway.service
say "systemd-analyze verify: the console's units are valid"
fi

python3 /tmp/run_units.py hangar-web@1.service hangar-web@2.service hangar-worker.service \
  hangar-beat.service hangar-gateway.service >/tmp/units.log 2>&1 &

# The agent on its own, as on a GPU host: its own environment, no Django.
t0=$SECONDS
"$dir/install.sh" --agent
say "agent installed in $((SECONDS - t0)) s"
if /opt/hangar-agent/bin/python -c 'import django' 2>/dev/null; then
  say "the agent's environment holds Django" && exit 1
fi
if command -v systemd-analyze >/dev/null; then
  systemd-analyze verify --man=no /etc/systemd/system/hangar-agent.service
  say "systemd-analyze verify: hangar-agent.service is valid"
fi

for _ in $(seq 1 60); do
  python3 -c 'import urllib.request; urllib.request.urlopen("http://127.0.0.1:8000/healthz", timeout=2)' 2>/dev/null && break
  sleep 1
done
token=$(hangar-manage shell -c '
from apps.inventory.models import Cluster
from apps.inventory.services import create_enrollment_token
cluster, _ = Cluster.objects.get_or_create(name="gpu-hosts")
print(create_enrollment_token(cluster, None, description="airgap test")[1])' | tail -1)
runuser -u hangar-agent -- env HANGAR_AGENT_STATE_DIR=/var/lib/hangar-agent \
  /opt/hangar-agent/bin/hangar-agent enroll --console http://127.0.0.1:8000 --token "$token" --simulate 2
python3 /tmp/run_units.py --extra hangar-agent.service=--simulate=2 hangar-agent.service \
  >/tmp/agent-units.log 2>&1 &

if ! result=$(python3 /tmp/check_console.py http://127.0.0.1:8000 /tmp/install.log --timeout 180); then
  tail -n 30 /tmp/units/*.log /tmp/units.log /tmp/agent-units.log >&2 || true
  exit 1
fi
say "console healthy: $result"

#!/usr/bin/env bash
# Install Hangar from this bundle, with no network (docs/install.md).
#
#   ./install.sh                      the console: /opt/hangar, user hangar,
#                                     /etc/hangar/hangar.env, systemd units
#   ./install.sh --local-database     also create the PostgreSQL role and database
#                                     on this host and put their URL in hangar.env
#   ./install.sh --agent              the node agent alone, for a GPU host:
#                                     /opt/hangar-agent, user hangar-agent, its unit;
#                                     its own small set of packages, no Django
#
# It starts nothing: `systemctl enable --now hangar.target` (or hangar-agent)
# comes after you have read /etc/hangar/hangar.env. Anything missing ends the
# install with one line naming it, before anything is changed.
set -euo pipefail
bundle=$(cd "$(dirname "$0")" && pwd)
mode=console local_database=false
for arg in "$@"; do
  case $arg in
    --agent) mode=agent ;;
    --local-database) local_database=true ;;
    -h | --help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option '$arg' (--agent, --local-database)" >&2; exit 2 ;;
  esac
done
fail() { echo "install.sh: $*" >&2; exit 1; }
say() { echo "install.sh: $*"; }

((EUID == 0)) || fail "run as root (it creates users, /opt/hangar and the systemd units)"
command -v sha256sum >/dev/null || fail "sha256sum is missing (Debian package coreutils)"
# Every file as built (SHA256SUMS, from MANIFEST.json's build): a truncated copy
# or a changed file stops here.
(cd "$bundle" && sha256sum --check --quiet --strict SHA256SUMS >/dev/null 2>&1) ||
  fail "the bundle's files do not match its SHA256SUMS (copied incompletely?); copy the archive again"

arch=$(uname -m)
case $arch in
  x86_64) wheelhouse=$bundle/wheelhouse ;;
  aarch64) fail "this bundle carries no complete aarch64 wheelhouse (MANIFEST.json lists what it has)" ;;
  *) fail "unsupported machine $arch (x86_64 only)" ;;
esac
python=$(command -v python3.11 || command -v python3 || true)
[[ -n $python ]] && "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' ||
  fail "CPython 3.11 is missing (Debian package python3); the wheels are built for it"
"$python" -c 'import ensurepip, venv' 2>/dev/null ||
  fail "Python's venv module is missing (Debian package python3-venv)"

# --- Debian packages: present, or installed from debs/ ------------------------------
installed() { [[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null) == installed ]]; }
if [[ $mode == console ]]; then
  command -v dpkg-query >/dev/null || fail "the console installs on Debian 12 (bookworm) only: dpkg is missing"
  mapfile -t needed <"$bundle/system-packages.txt"
else
  # The agent needs only the Python checked above, on any Linux.
  needed=()
fi
missing=()
for pkg in "${needed[@]+"${needed[@]}"}"; do installed "$pkg" || missing+=("$pkg"); done
if ((${#missing[@]})) && [[ -d $bundle/debs ]]; then
  say "installing from the bundle's .debs: ${missing[*]} (and what they depend on)"
  # Only .debs the machine lacks or has older: the bundle carries the whole
  # dependency closure, Essential packages included.
  take=()
  for deb in "$bundle"/debs/*.deb; do
    read -r name version < <(dpkg-deb -f "$deb" Package Version | awk '{print $2}' | paste -sd' ')
    have=$(dpkg-query -W -f='${Version}' "$name" 2>/dev/null || true)
    if ! installed "$name" || dpkg --compare-versions "$have" lt "$version"; then take+=("$deb"); fi
  done
  # Services must not start mid-install; the units start them later.
  made_policy=false
  [[ -e /usr/sbin/policy-rc.d ]] || { printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made_policy=true; }
  DEBIAN_FRONTEND=noninteractive dpkg -i "${take[@]}" >/dev/null || true
  $made_policy && rm -f /usr/sbin/policy-rc.d
  missing=()
  for pkg in "${needed[@]+"${needed[@]}"}"; do installed "$pkg" || missing+=("$pkg"); done
fi
((${#missing[@]} == 0)) ||
  fail "missing Debian packages: ${missing[*]}; install them from your local mirror (apt-get install ${missing[*]}) or use a bundle built with 'make bundle WITH_DEBS=1'"

# pip reads nothing but this bundle: no index, no user or site configuration.
export PIP_NO_INDEX=1 PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1
unset PIP_FIND_LINKS PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_CONSTRAINT
project_wheel=$(ls "$wheelhouse"/hangar-*.whl)

system_user() { # name home
  id -u "$1" >/dev/null 2>&1 ||
    useradd --system --user-group --home-dir "$2" --no-create-home --shell /usr/sbin/nologin "$1"
}

if [[ $mode == agent ]]; then
  system_user hangar-agent /var/lib/hangar-agent
  install -d -o hangar-agent -g hangar-agent -m 0700 /var/lib/hangar-agent
  [[ -x /opt/hangar-agent/bin/python ]] || "$python" -m venv /opt/hangar-agent
  /opt/hangar-agent/bin/pip install -q --find-links "$wheelhouse" --require-hashes -r "$bundle/agent-requirements.txt"
  # The project's code without the console's dependencies: the agent imports none of it.
  /opt/hangar-agent/bin/pip install -q --find-links "$wheelhouse" --no-deps --force-reinstall "$project_wheel"
  install -m 0644 "$bundle/app/deploy/systemd/hangar-agent.service" /etc/systemd/system/
  [[ -d /run/systemd/system ]] && systemctl daemon-reload
  say "installed $(/opt/hangar-agent/bin/hangar-agent --version) in /opt/hangar-agent"
  say "next: sudo -u hangar-agent HANGAR_AGENT_STATE_DIR=/var/lib/hangar-agent /opt/hangar-agent/bin/hangar-agent enroll --console https://CONSOLE --token TOKEN"
  say "then: systemctl enable --now hangar-agent"
  exit 0
fi

# --- the console -----------------------------------------------------------------
system_user hangar /var/lib/hangar
# 0711: nginx (www-data) reaches staticfiles/ inside, and nothing else.
install -d -o hangar -g hangar -m 0711 /var/lib/hangar
install -d -m 0755 /opt/hangar
install -d -o root -g hangar -m 0750 /etc/hangar /etc/hangar/tls

# The code is root's and read-only to the services; a new version replaces it whole.
rm -rf /opt/hangar/app.new
cp -a "$bundle/app" /opt/hangar/app.new
chown -R root:root /opt/hangar/app.new
rm -rf /opt/hangar/app.old
[[ ! -d /opt/hangar/app ]] || mv /opt/hangar/app /opt/hangar/app.old
mv /opt/hangar/app.new /opt/hangar/app
rm -rf /opt/hangar/app.old

[[ -x /opt/hangar/venv/bin/python ]] || "$python" -m venv /opt/hangar/venv
/opt/hangar/venv/bin/pip install -q --find-links "$wheelhouse" --require-hashes -r "$bundle/requirements.txt"
# Editable: Django finds templates, locale and static files beside the code.
/opt/hangar/venv/bin/pip install -q --find-links "$wheelhouse" --no-deps -e /opt/hangar/app
install -m 0755 /opt/hangar/app/deploy/hangar-manage /usr/local/bin/hangar-manage

env_file=/etc/hangar/hangar.env
if [[ ! -e $env_file ]]; then
  secret=$("$python" -c 'import secrets; print(secrets.token_urlsafe(48))')
  sed "s|^HANGAR_SECRET_KEY=.*|HANGAR_SECRET_KEY=$secret|" /opt/hangar/app/deploy/hangar.env.example >"$env_file"
  chown root:hangar "$env_file" && chmod 0640 "$env_file"
  say "wrote $env_file with a generated secret key: set HANGAR_ALLOWED_HOSTS and the URLs in it"
fi

if $local_database; then
  cd / # psql as postgres cannot read root's working directory
  command -v pg_lsclusters >/dev/null || fail "--local-database needs PostgreSQL (Debian package postgresql)"
  runuser -u postgres -- psql -q -c 'select 1' >/dev/null 2>&1 ||
    fail "PostgreSQL does not answer on this host; start it (systemctl start postgresql) and run install.sh again"
  # The cluster's own port: not 5432 where another cluster held it at creation.
  port=$(pg_lsclusters -h | awk '$4 == "online" {print $3; exit}')
  if ! runuser -u postgres -- psql -tAc "select 1 from pg_roles where rolname='hangar'" | grep -q 1; then
    password=$("$python" -c 'import secrets; print(secrets.token_hex(24))')
    runuser -u postgres -- psql -q -c "create role hangar login password '$password'"
    runuser -u postgres -- createdb -O hangar hangar
    sed -i "s|^HANGAR_DATABASE_URL=.*|HANGAR_DATABASE_URL=postgres://hangar:$password@127.0.0.1:${port:-5432}/hangar|" "$env_file"
    say "created the PostgreSQL role and database 'hangar'; their URL is in $env_file"
  fi
fi

install -m 0644 /opt/hangar/app/deploy/systemd/*.service /opt/hangar/app/deploy/systemd/*.socket \
  /opt/hangar/app/deploy/systemd/*.target /etc/systemd/system/
[[ -d /run/systemd/system ]] && systemctl daemon-reload

# Schema, static files for nginx, the first administrator: as the service user,
# with the services' own settings.
out=$(hangar-manage migrate --no-input -v 0 2>&1) ||
  fail "migrate failed: $(tail -n 1 <<<"$out"); fix HANGAR_DATABASE_URL in $env_file (is the database up?), then run: hangar-manage migrate"
hangar-manage collectstatic --no-input -v 0
chmod -R a+rX /var/lib/hangar/staticfiles
hangar-manage ensure_admin
say "installed Hangar $(cat /opt/hangar/app/pyproject.toml | sed -n 's/^version = "\(.*\)"/\1/p') in /opt/hangar"
say "next: put the certificate in /etc/hangar/tls/hangar.crt and hangar.key, the nginx site (docs/tls.md), then: systemctl enable --now hangar.target"

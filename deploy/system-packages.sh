#!/usr/bin/env bash
# The Debian packages Hangar needs beyond Python, by purpose, and what to do when
# some are missing: as root, apt-get install them, saying which and why; as
# anyone else, print one line naming them and the command, and exit 1.
#
#   deploy/system-packages.sh build          before `make run`/`make test` create .venv
#   deploy/system-packages.sh build test     .ci/run: also what the test suite drives
#   deploy/system-packages.sh ci             .ci/run: what the install tests need
#   deploy/system-packages.sh chaos          `make chaos`: the suite's own servers, namespaces
#   deploy/system-packages.sh --list GROUP   the names only (make bundle records them)
#
# Why python-ldap stays (docs/install.md): LDAP login is a feature universities use,
# and python-ldap ships no wheels on PyPI, so pip compiles it against these headers.
set -euo pipefail

declare -A PACKAGES=(
  [build]="gcc libc6-dev python3-dev libldap2-dev libsasl2-dev"
  [test]="slapd ldap-utils chromium chromium-driver redis-server postgresql nginx openssl systemd prometheus chrony"
  [ci]="mmdebstrap iproute2 git"
  [chaos]="postgresql redis-server iproute2"
  [ha]="postgresql redis-server redis-sentinel etcd-server nginx socat iproute2 python3-venv"
  [runtime]="python3 python3-venv redis-server postgresql nginx libldap-2.5-0 libsasl2-2 openssl"
)
declare -A WHY=(
  [build]="to compile python-ldap, the LDAP login, which has no wheel on PyPI"
  [test]="for the test suite (directory, browser, database, Redis, nginx, systemd-analyze, promtool, chronyc for the preflight clock check)"
  [ci]="to build and isolate the install tests' Debian roots"
  [chaos]="for the chaos suite's own PostgreSQL and Redis and its network namespaces"
  [ha]="for make ha: Patroni's PostgreSQL, etcd, Redis with Sentinel, nginx, and the network namespaces"
  [runtime]="for an installed console"
)

list=false
if [[ ${1:-} == --list ]]; then list=true; shift; fi
(($#)) || { echo "usage: $0 [--list] build|test|ci|chaos|runtime..." >&2; exit 2; }

wanted=() reasons=()
for group in "$@"; do
  [[ -n ${PACKAGES[$group]:-} ]] || { echo "$0: unknown group '$group' (build, test, ci, chaos, ha, runtime)" >&2; exit 2; }
  read -ra names <<<"${PACKAGES[$group]}"
  wanted+=("${names[@]}")
  reasons+=("${WHY[$group]}")
done
if $list; then printf '%s\n' "${wanted[@]}"; exit 0; fi

# Not Debian: nothing to check with; pip's own error will name a missing header.
command -v dpkg-query >/dev/null || exit 0

missing=()
for pkg in "${wanted[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
  [[ $status == installed ]] || missing+=("$pkg")
done
((${#missing[@]})) || exit 0

why=$(printf '%s; ' "${reasons[@]}") why=${why%; }
if ((EUID != 0)); then
  echo "hangar: missing Debian packages ${missing[*]} ($why); install them with: sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
  exit 1
fi

echo "hangar: installing ${missing[*]} ($why)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# Services these packages carry (slapd on port 389, a system PostgreSQL) must not
# start on their own: tests and `make run` start what they use.
made_policy=false
if [[ ! -e /usr/sbin/policy-rc.d ]]; then
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  made_policy=true
fi
status=0
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || status=$?
if $made_policy; then rm -f /usr/sbin/policy-rc.d; fi
exit $status

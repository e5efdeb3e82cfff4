#!/usr/bin/env bash
# The README's promise, proven: in a minimal Debian bookworm root holding only
# what the README names, `make run` (as root, so it apt-gets the build headers
# itself) brings up a console whose /healthz is healthy and whose local agent is
# online. Run as root (mmdebstrap, chroot, mounts); .ci/run calls it.
#
# The root tarball is cached in $HANGAR_CI_CACHE (default /var/cache/hangar-ci),
# and so are apt's and pip's downloads, so a warm run pays neither the
# bootstrap nor the downloads, only the installs themselves.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=deploy/tests/roots.sh
source "$here/roots.sh"
((EUID == 0)) || die "run as root: mmdebstrap, chroot and mounts need it"

# Exactly what the README's "A fresh machine" names; README.md is checked against
# this list by tests/install/test_install_files.py.
README_PACKAGES=(python3 python3-venv make git)

started=$SECONDS
tarball=$(cached_root "${README_PACKAGES[@]}")
work=$(mktemp -d /tmp/hangar-clean-root.XXXXXX)
root=$work/root
run_pid=
cleanup() {
  if [[ -n $run_pid ]]; then
    kill -INT -- "-$run_pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 -- "-$run_pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL -- "-$run_pid" 2>/dev/null || true
  fi
  umount_root "$root"
  if [[ -z ${KEEP_ROOT:-} ]]; then rm -rf "$work"; else say "kept $work"; fi
}
trap cleanup EXIT
unpack_root "$tarball" "$root"
mount_root "$root"
mkdir -p "$HANGAR_CI_CACHE/apt-archives/partial" "$HANGAR_CI_CACHE/pip"
mount --bind "$HANGAR_CI_CACHE/apt-archives" "$root/var/cache/apt/archives"
mkdir -p "$root/root/.cache/pip" && mount --bind "$HANGAR_CI_CACHE/pip" "$root/root/.cache/pip"

# A clone of the working tree: its tracked and not-ignored files, as a newcomer's
# `git clone` would hold them (uncommitted edits included, so it tests what you see).
mkdir -p "$root/root/hangar"
git -C "$repo" ls-files -z -co --exclude-standard |
  tar -C "$repo" --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -C "$root/root/hangar" -xf -

mapfile -t environment < <(root_env)
# A newcomer without root first: make stops at once with one line naming the
# packages and the command, and has created nothing.
chroot "$root" useradd --create-home newcomer
cp -a "$root/root/hangar" "$root/home/newcomer/hangar"
chroot "$root" chown -R newcomer: /home/newcomer/hangar
if refusal=$(chroot "$root" /usr/bin/env -i "${environment[@]}" HOME=/home/newcomer \
  runuser -u newcomer -- make -C /home/newcomer/hangar run 2>&1); then
  die "make run as a user without the build headers did not stop: $refusal"
fi
grep -q '^hangar: missing Debian packages .*libldap2-dev.*install them with: sudo apt-get install' \
  <<<"$refusal" || die "make run without root did not name the packages: $refusal"
[[ ! -e $root/home/newcomer/hangar/.venv ]] || die "make run without root created .venv anyway"
say "as a user: $(grep '^hangar:' <<<"$refusal")"

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
web=$(port) redis_port=$(port) gw=$(port) gw_admin=$(port)
# The root shares this machine's network (it needs PyPI and the mirror), so every
# port is a free one, and Redis points at a free port: nothing answers there, so
# make run starts its embedded Redis, as on a fresh machine.
log=$root/tmp/make-run.log
say "make run in the clean root (log: $log)"
setsid chroot "$root" /usr/bin/env -i "${environment[@]}" HANGAR_BIND=127.0.0.1:$web HANGAR_REDIS_URL=redis://127.0.0.1:$redis_port/0 \
  HANGAR_GATEWAY_BIND=127.0.0.1:$gw HANGAR_GATEWAY_ADMIN_BIND=127.0.0.1:$gw_admin \
  HANGAR_NODE_GRACE_SECONDS=5 \
  make -C /root/hangar run >"$log" 2>&1 &
run_pid=$!

cp "$here/check_console.py" "$root/tmp/check_console.py"
chroot "$root" python3 /tmp/check_console.py "http://127.0.0.1:$web" /tmp/make-run.log \
  --timeout "${CHECK_TIMEOUT:-900}" >"$work/check.out" 2>&1 &
check_pid=$!
# Whichever ends first: the check, or make run (a failed pip install, say).
while kill -0 "$check_pid" 2>/dev/null && kill -0 "$run_pid" 2>/dev/null; do sleep 1; done
if ! kill -0 "$run_pid" 2>/dev/null; then
  kill "$check_pid" 2>/dev/null || true
  tail -n 40 "$log" >&2
  run_pid=
  die "make run exited before the console was healthy (its output is above)"
fi
if ! wait "$check_pid"; then
  tail -n 40 "$log" >&2
  die "$(tail -n 1 "$work/check.out")"
fi
say "make run healthy after $((SECONDS - started)) s: $(tail -n 1 "$work/check.out")"

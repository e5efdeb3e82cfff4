#!/usr/bin/env bash
# The air-gapped install, proven: in a clean bookworm root with the runtime
# Debian packages an appliance gets from its OS install or local mirror
# (system-packages.txt; a bundle built WITH_DEBS=1 carries them instead),
# install.sh runs inside a network namespace with nothing but loopback
# (`unshare -n`), the console comes up from the installed systemd units, the
# agent-only install enrolls and its node goes online.
#
#   deploy/tests/airgap.sh dist/hangar-<version>-<commit>.tar.gz
#   deploy/tests/airgap.sh --debs dist/hangar-<version>-<commit>-debs.tar.gz
#       the root holds only what the README names; install.sh installs the
#       runtime packages from the bundle's .debs (make bundle WITH_DEBS=1)
#
# Run as root; .ci/run calls it after `make bundle`. The root is cached like
# clean-root.sh's ($HANGAR_CI_CACHE).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=deploy/tests/roots.sh
source "$here/roots.sh"
((EUID == 0)) || die "run as root: mmdebstrap, chroot, mounts and unshare need it"
from_debs=false
if [[ ${1:-} == --debs ]]; then from_debs=true; shift; fi
bundle=$(realpath "${1:?usage: airgap.sh [--debs] BUNDLE.tar.gz}")
[[ -f $bundle ]] || die "no bundle at $1 (make bundle writes one to dist/)"

if $from_debs; then
  grep -q '/debs/.*\.deb$' < <(tar -tzf "$bundle") || die "$bundle carries no .debs (make bundle WITH_DEBS=1)"
  # clean-root.sh's root: what the README names, nothing more.
  mapfile -t packages < <(sed -n 's/^README_PACKAGES=(\(.*\))$/\1/p' "$here/clean-root.sh" | tr ' ' '\n')
else
  mapfile -t packages < <("$repo/deploy/system-packages.sh" --list runtime)
  # systemd only for `systemd-analyze verify`; nothing starts it in the root.
  packages+=(systemd)
fi
tarball=$(cached_root "${packages[@]}")
work=$(mktemp -d /tmp/hangar-airgap.XXXXXX)
root=$work/root
cleanup() {
  # Everything ran inside the namespace's process tree: stop what is left in the root.
  for pid in $(ls /proc | grep -E '^[0-9]+$'); do
    [[ $(readlink "/proc/$pid/root" 2>/dev/null) == "$root" ]] && kill -KILL "$pid" 2>/dev/null
  done
  sleep 1
  umount_root "$root"
  if [[ -z ${KEEP_ROOT:-} ]]; then rm -rf "$work"; else say "kept $work"; fi
}
trap cleanup EXIT
unpack_root "$tarball" "$root"
mount_root "$root"
cp "$bundle" "$root/root/"
cp "$here/check_console.py" "$here/run_units.py" "$here/airgap-inside.sh" "$root/tmp/"

started=$SECONDS
# No interface but loopback: PyPI, the mirror and this machine's services are
# unreachable, so anything install.sh fetched would fail here.
if ! unshare --net -- /bin/bash -c "ip link set lo up && exec chroot '$root' /usr/bin/env -i \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
    AIRGAP_FROM_DEBS=$from_debs /bin/bash /tmp/airgap-inside.sh /root/${bundle##*/}" 2>&1 | tee "$work/inside.log" >&2; then
  die "the air-gapped install failed (its output is above)"
fi
grep -q '^airgap: console healthy' "$work/inside.log" || die "the air-gapped install did not end healthy"
say "done in $((SECONDS - started)) s"

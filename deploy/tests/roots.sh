# Shared by clean-root.sh and airgap.sh (sourced, not run): minimal Debian
# bookworm roots built once with mmdebstrap and cached as tarballs, and a
# chroot with /proc, /dev and /sys mounted that cleans up after itself.

HANGAR_CI_CACHE=${HANGAR_CI_CACHE:-/var/cache/hangar-ci}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

say() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }
die() { say "$*"; exit 1; }

# cached_root PACKAGE... -> prints the tarball's path. The name carries a hash of
# the package list (and mirror), so a changed list builds a new root once.
cached_root() {
  local hash tarball
  hash=$(printf '%s\n' "$DEBIAN_MIRROR" "$@" | sha256sum | cut -c1-16)
  tarball=$HANGAR_CI_CACHE/bookworm-$hash.tar
  if [[ ! -s $tarball ]]; then
    command -v mmdebstrap >/dev/null || die "mmdebstrap is missing: apt-get install mmdebstrap"
    mkdir -p "$HANGAR_CI_CACHE"
    say "building a bookworm root with: $* (once; cached as $tarball)"
    local started=$SECONDS
    # minbase: Essential packages and apt only; nothing a newcomer's machine would
    # not have. Written to a temporary name so an interrupted build is never used.
    mmdebstrap --quiet --variant=minbase --format=tar --include="$(IFS=,; echo "$*")" \
      bookworm "$tarball.part" "$DEBIAN_MIRROR" >&2
    mv "$tarball.part" "$tarball"
    say "root built in $((SECONDS - started)) s"
  fi
  printf '%s\n' "$tarball"
}

# unpack_root TARBALL DIR: a fresh root with a resolver and mount points.
unpack_root() {
  mkdir -p "$2"
  tar -xf "$1" -C "$2"
  cp /etc/resolv.conf "$2/etc/resolv.conf"
  # mmdebstrap leaves no /etc/hosts; every installed machine has one, and
  # PostgreSQL's listen_addresses=localhost needs it.
  [[ -s $2/etc/hosts ]] || printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n' >"$2/etc/hosts"
  # The network CI runs on may inspect TLS with its own authority; the root
  # trusts what this machine trusts (PIP_CERT in root_env), nothing more.
  cp /etc/ssl/certs/ca-certificates.crt "$2/etc/hangar-ci-ca.crt"
}

# root_env: the environment a fresh login in the root would have.
root_env() {
  printf '%s\n' PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    LANG=C.UTF-8 PIP_CERT=/etc/hangar-ci-ca.crt
}

# mount_root DIR: /proc, /dev, /sys inside; umount_root DIR undoes it (and any
# bind mount below DIR), deepest first.
mount_root() {
  mount -t proc proc "$1/proc"
  mount --rbind /dev "$1/dev" && mount --make-rslave "$1/dev"
  mount --rbind /sys "$1/sys" && mount --make-rslave "$1/sys"
}
umount_root() {
  local target
  findmnt -rn -o TARGET | grep -F "$1/" | sort -r | while read -r target; do
    umount -l "$target" 2>/dev/null || true
  done
}

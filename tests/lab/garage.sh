#!/usr/bin/env bash
# garage.sh — print the path of a real garage binary for the tests, building
# it once from the Rust package registry when it is not cached yet.
#
# The build takes ~25-30 min on 2 cores, so the binary is cached OUTSIDE the
# work tree (CI runs in fresh clones on the same machine):
#   ${MESH_CACHE:-$HOME/.cache/mesh}/garage-$VERSION/bin/garage
set -euo pipefail

VERSION=2.5.0
CACHE=${MESH_CACHE:-$HOME/.cache/mesh}
ROOT=$CACHE/garage-$VERSION
BIN=$ROOT/bin/garage

if [[ ! -x $BIN ]]; then
    mkdir -p "$CACHE"
    echo "garage: building $VERSION into $ROOT (once; ~30 min on 2 cores)" >&2
    # Release build with little memory per job; the lock keeps parallel callers from building twice.
    exec 9> "$CACHE/garage.lock"
    flock 9
    if [[ ! -x $BIN ]]; then
        nice -n 10 cargo install garage --version "$VERSION" --locked \
            --no-default-features --features lmdb,bundled-libs \
            --root "$ROOT" >&2
    fi
fi
"$BIN" --version >&2
echo "$BIN"

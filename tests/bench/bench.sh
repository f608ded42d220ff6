#!/usr/bin/env bash
# bench.sh N — wall times of mesh on N lab hosts (default 50), printed, never asserted.
#
# The work is a `nodes`-style step (`mesh bench`): a 20 MB file, two templated
# files and a systemd unit, enabled and started. "cold" runs after a reset
# (files and unit removed on every host, fresh SSH connections); "warm" is the
# re-run on the converged hosts; a third run re-hashes every file (--checksum).
# Then `nodes --only garage` (real garage binary + config + unit on every host,
# the cluster layout applied once from the controller), cold and warm.
set -euo pipefail

N=${1:-50}
# garage runs on the first G hosts only: 50 garage daemons on a 2-core machine
# spend their time timing out each other's pings, which measures the machine,
# not mesh. GARAGE_N overrides.
G=${GARAGE_N:-$(( N < 10 ? N : 10 ))}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
MESH=$ROOT/target/release/mesh
DIR=$ROOT/target/lab/bench
INV=$DIR/inventory.yml
ASSET=$ROOT/target/bench/asset-20M.bin

cd "$ROOT"
[[ -x $MESH ]] || cargo build --release --quiet
"$ROOT/tests/lab/lab.sh" up --name bench --count "$N" --slot 2 --dir "$DIR" >/dev/null
mkdir -p "$(dirname "$ASSET")"
[[ -s $ASSET ]] || head -c 20000000 /dev/urandom > "$ASSET"

mesh() { "$MESH" -i "$INV" --progress never "$@"; }

# Seconds a command takes, its output kept in a log; fails the bench if it fails.
timed() {
    local log=$1; shift
    local t0 t1
    t0=$(date +%s.%N)
    if ! "$@" > "$log" 2>&1; then
        echo "bench: '$*' failed, see $log" >&2
        tail -n 20 "$log" >&2
        exit 1
    fi
    t1=$(date +%s.%N)
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }'
}

reset() {
    mesh exec -- 'systemctl disable --now mesh-bench.service 2>/dev/null;
        rm -rf /opt/mesh-bench /etc/systemd/system/mesh-bench.service /var/lib/mesh/files;
        systemctl daemon-reload' > "$DIR/reset.log" 2>&1
}

# Garage daemons left by an earlier bench would compete for the CPU.
reset_garage() {
    mesh exec -- 'systemctl disable --now garage.service 2>/dev/null;
        rm -rf /var/lib/garage /var/lib/private/garage /etc/garage.toml /usr/local/bin/garage \
            /etc/systemd/system/garage.service;
        systemctl daemon-reload' > "$DIR/reset.log" 2>&1
    rm -f "$DIR/secrets.env"
}
# Garage left off from here until its own cold run (the bench step never touches it).
reset_garage
reset
cold=$(timed "$DIR/cold.log" mesh bench --asset "$ASSET")
warm=$(timed "$DIR/warm.log" mesh bench --asset "$ASSET")
grep -q "^$N hosts: 0 changed, 0 failed" "$DIR/warm.log" || {
    echo "bench: warm run changed something:" >&2; tail -n 5 "$DIR/warm.log" >&2; exit 1; }
checksum=$(timed "$DIR/checksum.log" mesh --checksum bench --asset "$ASSET")

# garage: the real binary (built once, cached) as the asset.
mkdir -p "$DIR/assets/$(uname -m)"
cp "$("$ROOT/tests/lab/garage.sh")" "$DIR/assets/$(uname -m)/garage"
first=$(awk '/address:/ { sub(/.*address: /, ""); sub(/,.*/, ""); print; exit }' "$INV")
limits=()
for i in $(seq 1 "$G"); do limits+=(--limit "bench-$i"); done
garage() { mesh --assets "$DIR/assets" "${limits[@]}" nodes --first-ip "$first" --only garage; }
gcold=$(timed "$DIR/garage-cold.log" garage)
gwarm=$(timed "$DIR/garage-warm.log" garage)
grep -q "^$G hosts: 0 changed, 0 failed" "$DIR/garage-warm.log" || {
    echo "bench: warm garage run changed something:" >&2; tail -n 5 "$DIR/garage-warm.log" >&2; exit 1; }
reset_garage

echo "mesh bench on $N lab hosts ($(nproc) cores):"
echo "  nodes-style step: 20 MB file + 2 templates + 1 unit"
printf '    %-36s %6ss\n' "cold (after reset)" "$cold" "warm (re-run, 0 changed)" "$warm" \
    "warm with --checksum (re-hash all)" "$checksum"
echo "  nodes --only garage on $G hosts: $(du -m "$DIR/assets/$(uname -m)/garage" | cut -f1) MB binary + config + unit + layout"
printf '    %-36s %6ss\n' "cold (after reset)" "$gcold" "warm (re-run, 0 changed)" "$gwarm"
echo "logs: $DIR/{cold,warm,checksum,garage-cold,garage-warm}.log"

#!/usr/bin/env bash
# bench.sh N — wall times of mesh on N lab hosts (default 50), printed, never asserted.
#
# The work is a `nodes`-style step (`mesh bench`): a 20 MB file, two templated
# files and a systemd unit, enabled and started. "cold" runs after a reset
# (files and unit removed on every host, fresh SSH connections); "warm" is the
# re-run on the converged hosts; a third run re-hashes every file (--checksum).
# A converged `nodes --only basic` is timed against `exec -- true` (the cost
# of one login per host): the warm-run overhead ratio; `status` likewise.
# Then `nodes --only garage` (real garage binary + config + unit on every host,
# the cluster layout applied once from the controller), cold and warm. Last,
# `services` on S hosts (default 10): the example web image (≈150 MB: Debian
# base + python3) built here and shipped to hosts that lack it, cold and warm,
# against a bare `docker save | ssh HOST docker load` to the same hosts, then
# both again with this machine's uplink shaped to UPLINK (tc, default 50mbit).
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
# Fresh hosts every run: what an earlier run left (images, containers,
# garage's bucket) would change what is measured.
"$ROOT/tests/lab/lab.sh" down --name bench-edge >/dev/null
"$ROOT/tests/lab/lab.sh" down --name bench >/dev/null
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

# CPU time the whole machine (controller and every lab host) spent busy,
# in core-seconds: with all hosts on this machine's cores, a wall time
# near busy / cores is the machine's limit, not mesh waiting.
busy() { awk '/^cpu / { printf "%d", $2 + $3 + $4 + $7 + $8 }' /proc/stat; }
# Core-seconds busy since the busy reading $1.
core_s() { awk -v a="$1" -v b="$(busy)" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", (b - a) / hz }'; }

# CPU microseconds the bench hosts (their containers' cgroups, v1 or v2)
# have used: what the lab hosts did, apart from this machine's own side.
hosts_cpu() {
    local id f total=0 v
    for id in $(docker ps -q --no-trunc --filter 'name=^bench-[0-9]'); do
        for f in /sys/fs/cgroup/cpuacct/docker/"$id"/cpuacct.usage /sys/fs/cgroup/system.slice/docker-"$id".scope/cpu.stat; do
            [[ -r $f ]] || continue
            case $f in
                *cpuacct.usage) v=$(( $(cat "$f") / 1000 )) ;;
                *) v=$(awk '$1 == "usage_usec" { print $2 }' "$f") ;;
            esac
            total=$(( total + v )); break
        done
    done
    echo "$total"
}
# Core-seconds the bench hosts used since the hosts_cpu reading $1.
hosts_s() { awk -v a="$1" -v b="$(hosts_cpu)" 'BEGIN { printf "%.1f", (b - a) / 1000000 }'; }

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
cold_start=$(date +%s.%N)
c0=$(busy)
h0=$(hosts_cpu)
cold=$(timed "$DIR/cold.log" mesh bench --asset "$ASSET")
cold_c=$(core_s "$c0")
cold_h=$(hosts_s "$h0")
cold_logs=$(ls -td "$DIR"/.mesh/logs/*-bench-* | head -n 1)
# Where the cold run's time went, summed over the hosts (from each host's
# log): connect (mesh's start, login, mux), the probe round trip, then the
# one round trip that applies, split by the marks the host timed itself
# ("remote stages"): until the script starts on the host, the upload (the
# files' parts), daemon-reload, enable, start (and the wait for active),
# and from the last mark until the answer is back.
stages=$(awk -v t0="$cold_start" '
    FNR == 1 { step = 0; probe = 0 }
    /^--- [0-9.]+ step / && !step { step = $2; connect += step - t0 }
    /^--- [0-9.]+ probe / && !probe { probe = $2; probing += probe - step }
    /^--- [0-9.]+ apply / { sent = $2 }
    /^@@mesh-epoch [0-9.]+$/ { epoch = $2; to_host += epoch - sent }
    /^@@mesh-t begin [0-9.]+$/ { up0 = $3 }
    /^@@mesh-t [^ ]+ [0-9.]+$/ { mark = epoch + $3 - up0 }
    /^--- [0-9.]+ .*\(exit [0-9]+\)$/ { ended = $2 }
    /^--- [0-9.]+ remote stages \(s\): / {
        back += ended - mark
        line = $0; sub(/^.*remote stages \(s\): /, "", line)
        n = split(line, parts, ", ")
        for (i = 1; i <= n; i++) {
            eq = match(parts[i], /=[0-9.]+$/); name = substr(parts[i], 1, eq - 1)
            secs = substr(parts[i], eq + 1)
            if (name ~ /^(file|dir) / || name == "unit-file") upload += secs
            else if (name == "daemon-reload") reload += secs
            else if (name == "enable") enable += secs
            else if (name ~ /^unit /) start += secs
            else other += secs
        } }
    END { printf "%.1f %.1f %.1f %.1f %.1f %.1f %.1f %.1f %.1f", connect, probing, to_host,
          upload, reload, enable, start, other, back }' "$cold_logs"/bench-*.log)
read -r st_connect st_probe st_to_host st_upload st_reload st_enable st_start st_other st_back <<< "$stages"
warm=$(timed "$DIR/warm.log" mesh bench --asset "$ASSET")
grep -q "^$N hosts: 0 changed, 0 failed" "$DIR/warm.log" || {
    echo "bench: warm run changed something:" >&2; tail -n 5 "$DIR/warm.log" >&2; exit 1; }
checksum=$(timed "$DIR/checksum.log" mesh --checksum bench --asset "$ASSET")
# The floor: a raw OpenSSH copy of the same 20 MB to every host, in parallel,
# each on a fresh connection.
raw() {
    local ip pids=()
    for ip in $(grep -E "^      bench-[0-9]+:" "$INV" | sed 's/.*address: //; s/,.*//'); do
        ssh -i "$DIR/id_ed25519" -o UserKnownHostsFile="$DIR/known_hosts" -o StrictHostKeyChecking=accept-new \
            -o BatchMode=yes -o ControlPath=none "root@$ip" 'cat > /tmp/mesh-bench-raw.bin' < "$ASSET" &
        pids+=($!)
    done
    local p; for p in "${pids[@]}"; do wait "$p"; done
}
c0=$(busy)
h0=$(hosts_cpu)
rawcopy=$(timed "$DIR/raw-copy.log" raw)
raw_c=$(core_s "$c0")
raw_h=$(hosts_s "$h0")

# A converged `nodes --only basic` (packages, firewall, sysctl, ...) against
# the floor: one login and `true` on the same hosts.
timed "$DIR/basic-first.log" mesh nodes --only basic >/dev/null
basic=$(timed "$DIR/basic-warm.log" mesh nodes --only basic)
grep -q "^$N hosts: 0 changed, 0 failed" "$DIR/basic-warm.log" || {
    echo "bench: warm nodes --only basic changed something:" >&2; tail -n 5 "$DIR/basic-warm.log" >&2; exit 1; }
floor=$(timed "$DIR/exec-true.log" mesh exec -- true)
# `status` reads every host in one round trip: against the same floor. Exit 1
# (something is wrong: bench hosts run no services, garage is off) is its answer.
status_read() { mesh status || [[ $? == 1 ]]; }
status=$(timed "$DIR/status.log" status_read)

# garage: the real binary (built once, cached) as the asset.
mkdir -p "$DIR/assets/$(uname -m)"
cp "$("$ROOT/tests/lab/garage.sh")" "$DIR/assets/$(uname -m)/garage"
# The address of an inventory's first host.
first_address() { awk '/address:/ { sub(/.*address: /, ""); sub(/,.*/, ""); print; exit }' "$1"; }
first=$(first_address "$INV")
limits=()
for i in $(seq 1 "$G"); do limits+=(--limit "bench-$i"); done
garage() { mesh --assets "$DIR/assets" "${limits[@]}" nodes --first-ip "$first" --only garage; }
gcold=$(timed "$DIR/garage-cold.log" garage)
gwarm=$(timed "$DIR/garage-warm.log" garage)
grep -q "^$G hosts: 0 changed, 0 failed" "$DIR/garage-warm.log" || {
    echo "bench: warm garage run changed something:" >&2; tail -n 5 "$DIR/garage-warm.log" >&2; exit 1; }

# Bytes this machine sent to the lab hosts: the lab bridge's transmit
# counter (host-to-host traffic, garage's replication, is switched inside
# the bridge and not counted).
BRIDGE=br-$(docker network inspect -f '{{.Id}}' meshlab | cut -c1-12)
sent() { cat "/sys/class/net/$BRIDGE/statistics/tx_bytes"; }
# "SECONDS BYTES BUSY" of a command.
measured() {
    local log=$1; shift
    local b0 c0 t
    b0=$(sent)
    c0=$(busy)
    t=$(timed "$log" "$@")
    echo "$t $(( $(sent) - b0 )) $(core_s "$c0")"
}
mb() { awk -v b="$1" 'BEGIN { printf "%.1f MB", b / 1000000 }'; }

# services: the example web image to the first S hosts (garage's hosts;
# Docker installed on them once).
S=${SERVICES_N:-$G}
(( S <= G )) || S=$G
slimits=()
for i in $(seq 1 "$S"); do slimits+=(--limit "bench-$i"); done
# Debian 13 has the docker CLI in its own package.
docker_install='command -v docker >/dev/null && command -v zstd >/dev/null || { apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io zstd curl \
        $(apt-cache show docker-cli >/dev/null 2>&1 && echo docker-cli) >/dev/null; }'
mesh "${slimits[@]}" exec -- "$docker_install" > "$DIR/docker-install.log" 2>&1
SVC=$DIR/services
rm -rf "$SVC" && mkdir -p "$SVC/df"
cp -a "$ROOT/dockerfiles/web" "$SVC/df/web"
printf 'services:\n  web:\n    network_mode: host\n    environment: { BIND: "<< OVERLAY_IP >>", PORT: "<< PORT_WEB >>" }\n' > "$SVC/df/web.yml"
# The garage keys `nodes` made, for --ship garage.
cp "$DIR/secrets.env" "$SVC/secrets.env"
# A greeting of its own: this run's image is new to every Docker involved.
{ echo "vars: { BASE_IMAGE: \"$("$ROOT/tests/lab/base-image.sh")\", GREETING: \"bench $(date +%s%N)\" }"
  sed -n '/^ssh:/,/^groups:/p' "$INV"
  echo "  web:"
  echo "    hosts:"
  grep -E "^      bench-[0-9]+:" "$INV" | head -n "$S"
} > "$SVC/inventory.yml"
svc() { "$MESH" -i "$SVC/inventory.yml" --progress never services --dockerfiles "$SVC/df" "$@"; }
scold=$(timed "$DIR/services-cold.log" svc --ship ssh)
swarm=$(timed "$DIR/services-warm.log" svc)
grep -q "^$S hosts: 0 changed, 0 failed" "$DIR/services-warm.log" || {
    echo "bench: warm services run changed something:" >&2; tail -n 5 "$DIR/services-warm.log" >&2; exit 1; }
tag=$(grep -o 'mesh/web:[0-9a-f]*' "$DIR/services-cold.log" | head -n 1)
size=$(docker image inspect --format '{{.Size}}' "$tag" | awk '{ printf "%d", $1 / 1000000 }')
zsize=$(docker save "$tag" | zstd -T0 -3 -q | wc -c)
unship() { mesh "${slimits[@]}" exec -- "docker rmi -f \$(docker image ls -q mesh/web) >/dev/null 2>&1; true" > "$DIR/reset.log" 2>&1; }
# (a) the new image to S hosts: through garage, straight by SSH, and the bare way.
unship
read -r agarage_t agarage_b agarage_c < <(measured "$DIR/ship-garage.log" svc --ship garage)
grep -q "0 failed" "$DIR/ship-garage.log" || { echo "bench: --ship garage failed" >&2; tail -n 5 "$DIR/ship-garage.log" >&2; exit 1; }
unship
read -r assh_t assh_b assh_c < <(measured "$DIR/ship-ssh.log" svc --ship ssh)
unship
bare() {
    local ip pids=()
    for ip in $(grep -E "^      bench-[0-9]+:" "$INV" | head -n "$S" | sed 's/.*address: //; s/,.*//'); do
        docker save "$tag" | zstd -T0 -3 -q | ssh -i "$DIR/id_ed25519" -o UserKnownHostsFile="$DIR/known_hosts" \
            -o StrictHostKeyChecking=accept-new -o BatchMode=yes "root@$ip" 'zstd -dcq | docker load' >/dev/null &
        pids+=($!)
    done
    local p; for p in "${pids[@]}"; do wait "$p"; done
}
read -r abare_t abare_b abare_c < <(measured "$DIR/services-bare.log" bare)
# (a) again with this machine's uplink shaped to UPLINK (default 50mbit, the
# issue's home uplink): a token bucket on the lab bridge's egress, which only
# what this machine sends passes (host-to-host traffic is switched past it).
# A new garage first: the bucket of the first cluster already holds the layers.
UPLINK=${UPLINK:-50mbit}
shaped=0
shape() { tc qdisc add dev "$BRIDGE" root tbf rate "$UPLINK" burst 64kb latency 100ms; }
if shape 2> "$DIR/tc.log" && tc qdisc del dev "$BRIDGE" root; then
    shaped=1
    reset_garage
    timed "$DIR/garage-again.log" garage >/dev/null
    cp "$DIR/secrets.env" "$SVC/secrets.env"
    unship
    shape
    trap 'tc qdisc del dev "$BRIDGE" root 2>/dev/null || true' EXIT
    read -r sgarage_t sgarage_b sgarage_c < <(measured "$DIR/ship-garage-shaped.log" svc --ship garage)
    grep -q "0 failed" "$DIR/ship-garage-shaped.log" || { echo "bench: shaped --ship garage failed" >&2; exit 1; }
    unship
    read -r sbare_t sbare_b sbare_c < <(measured "$DIR/services-bare-shaped.log" bare)
    tc qdisc del dev "$BRIDGE" root
    trap - EXIT
fi
# (b) a one-file change: to one host, then another one-file change to all S.
svc --ship auto > "$DIR/ship-restore.log" 2>&1
echo "changed $(date +%s%N)" > "$SVC/df/web/index.html"
read -r bone_t bone_b bone_c < <(measured "$DIR/change-one.log" svc --limit bench-1)
echo "changed again $(date +%s%N)" > "$SVC/df/web/index.html"
read -r ball_t ball_b ball_c < <(measured "$DIR/change-all.log" svc --ship garage)

# (b) with `deploy`: web routed by a real Traefik on a bastion of its own
# (lab bench-edge, one host, slot 3, its own key), on the same S workers.
# A one-file change rolled out to one host, then another to all S at once
# (--batch 100%): each waits for the new copy's health check, the route's
# switch on the bastion and the old copy's drain. `--ship auto` sends a
# change this small (under 1 MiB for all hosts together) straight by SSH.
EDGE=$DIR/edge
"$ROOT/tests/lab/lab.sh" up --name bench-edge --count 1 --slot 3 --dir "$EDGE" >/dev/null
edge=$(first_address "$EDGE/inventory.yml")
DEP=$DIR/deploy
rm -rf "$DEP" && mkdir -p "$DEP"
cp -a "$ROOT/dockerfiles" "$DEP/df"
# Backups are not what this measures (and the bucket outlives this folder's restic password).
sed -i '/^backup:/d' "$DEP/df/web/mesh.yml"
cp "$("$ROOT/tests/lab/traefik.sh" 2> "$DIR/traefik.log")" "$DEP/df/traefik/traefik"
cp "$DIR/secrets.env" "$DEP/secrets.env"
{ echo "vars: { BASE_IMAGE: \"$("$ROOT/tests/lab/base-image.sh")\", WEB_DOMAIN: web.bench.test, GREETING: \"bench deploy $(date +%s%N)\" }"
  echo "ingress: { crowdsec: false }"
  sed -n '/^ssh:/,/^groups:/p' "$INV"
  echo "  bastion:"
  echo "    hosts:"
  echo "      edge: { address: $edge, overlay_ip: $edge, services: [traefik, redis],"
  echo "              ssh: { identity_file: $EDGE/id_ed25519, options: { UserKnownHostsFile: $EDGE/known_hosts } } }"
  echo "  web:"
  echo "    hosts:"
  grep -E "^      bench-[0-9]+:" "$INV" | head -n "$S" | sed 's/ }$/, traefik_host: edge }/'
} > "$DEP/inventory.yml"
dmesh() { "$MESH" -i "$DEP/inventory.yml" --progress never "$@"; }
# Docker on the bastion, compose everywhere (Debian 13's docker-compose is v2).
dmesh exec -- "$docker_install; { docker compose version || apt-get install -y -qq --no-install-recommends docker-compose; } >/dev/null 2>&1" \
    > "$DIR/deploy-docker.log" 2>&1
timed "$DIR/deploy-services.log" dmesh services --dockerfiles "$DEP/df" >/dev/null
timed "$DIR/deploy-up.log" dmesh services-up >/dev/null
routed=0
for _ in $(seq 60); do
    curl -fsS -m 3 -H 'Host: web.bench.test' "http://$edge/" >/dev/null 2>&1 && { routed=1; break; }
    sleep 0.5
done
((routed)) || { echo "bench: web.bench.test does not answer on the bastion $edge" >&2; exit 1; }
deploy() { dmesh deploy --service web --dockerfiles "$DEP/df" "$@"; }
echo "deployed to one $(date +%s%N)" > "$DEP/df/web/index.html"
read -r done_t done_b done_c < <(measured "$DIR/deploy-one.log" deploy --limit bench-1)
echo "deployed to all $(date +%s%N)" > "$DEP/df/web/index.html"
read -r dall_t dall_b dall_c < <(measured "$DIR/deploy-all.log" deploy --batch 100%)
curl -fsS -m 3 -H 'Host: web.bench.test' "http://$edge/" | grep -q "deployed to all" || {
    echo "bench: the bastion does not serve the deployed page" >&2; exit 1; }
reset_garage

echo "mesh bench on $N lab hosts ($(nproc) cores):"
echo "  nodes-style step: 20 MB file + 2 templates + 1 unit"
printf '    %-36s %6ss\n' "cold (after reset)" "$cold" "warm (re-run, 0 changed)" "$warm" \
    "warm with --checksum (re-hash all)" "$checksum" "raw OpenSSH copy of the 20 MB" "$rawcopy"
printf '    %-36s %6s\n' "cold / raw copy" "$(awk -v a="$cold" -v b="$rawcopy" 'BEGIN { printf "%.2f", a / b }')"
echo "    machine busy: cold ${cold_c}, raw copy ${raw_c} core-seconds on $(nproc) cores;" \
    "of which the lab hosts: cold ${cold_h}, raw copy ${raw_h}"
echo "    cold run, summed over $N hosts: connect ${st_connect}s, probe ${st_probe}s;" \
    "one apply round trip: to the host ${st_to_host}s, upload ${st_upload}s," \
    "daemon-reload ${st_reload}s, enable ${st_enable}s, start (a new unit's enable --now) ${st_start}s, other ${st_other}s, back ${st_back}s"
echo "  converged nodes --only basic vs one login per host"
printf '    %-36s %6ss\n' "nodes --only basic (warm)" "$basic" "exec -- true" "$floor"
printf '    %-36s %6s\n' "ratio" "$(awk -v a="$basic" -v b="$floor" 'BEGIN { printf "%.1f", a / b }')"
echo "  status (one round trip per host) vs one login per host"
printf '    %-36s %6ss\n' "status" "$status" "exec -- true" "$floor"
printf '    %-36s %6s\n' "ratio" "$(awk -v a="$status" -v b="$floor" 'BEGIN { printf "%.1f", a / b }')"
echo "  nodes --only garage on $G hosts: $(du -m "$DIR/assets/$(uname -m)/garage" | cut -f1) MB binary + config + unit + layout"
printf '    %-36s %6ss\n' "cold (after reset)" "$gcold" "warm (re-run, 0 changed)" "$gwarm"
echo "  services on $S hosts: example web image ($size MB; $(mb "$zsize") as one docker save | zstd)"
printf '    %-36s %6ss\n' "cold (build + ship to all by ssh)" "$scold" "warm (re-run: 0 built, 0 shipped)" "$swarm"
echo "  image shipping to $S hosts with garage: wall time, bytes this machine sent (lab bridge counter)"
echo "    (wall time, bytes sent, machine busy core-seconds on $(nproc) cores)"
row() { printf '    %-46s %7ss %12s %7s\n' "$1" "$2" "$(mb "$3")" "$4"; }
row "(a) new image, --ship garage" "$agarage_t" "$agarage_b" "$agarage_c"
row "(a) new image, --ship ssh" "$assh_t" "$assh_b" "$assh_c"
row "(a) bare docker save | zstd | ssh | docker load" "$abare_t" "$abare_b" "$abare_c"
printf '    %-46s %8s\n' "(a) garage bytes / one compressed image" \
    "$(awk -v a="$agarage_b" -v b="$zsize" 'BEGIN { printf "%.2f", a / b }')" \
    "(a) garage time / bare time" "$(awk -v a="$agarage_t" -v b="$abare_t" 'BEGIN { printf "%.2f", a / b }')"
if ((shaped)); then
    row "(a) new image, --ship garage, uplink $UPLINK" "$sgarage_t" "$sgarage_b" "$sgarage_c"
    row "(a) bare, uplink $UPLINK" "$sbare_t" "$sbare_b" "$sbare_c"
    printf '    %-46s %8s\n' "(a) garage time / bare time, uplink $UPLINK" \
        "$(awk -v a="$sgarage_t" -v b="$sbare_t" 'BEGIN { printf "%.2f", a / b }')"
else
    echo "    (a) with a shaped uplink: not measured, tc could not shape $BRIDGE: $(head -c 200 "$DIR/tc.log")"
fi
row "(b) one-file change to 1 host, services" "$bone_t" "$bone_b" "$bone_c"
row "(b) one-file change to $S hosts, services --ship garage" "$ball_t" "$ball_b" "$ball_c"
printf '    %-46s %8s\n' "(b) time $S hosts / time 1 host" \
    "$(awk -v a="$ball_t" -v b="$bone_t" 'BEGIN { printf "%.2f", a / b }')"
row "(b) one-file change, deploy to 1 host" "$done_t" "$done_b" "$done_c"
row "(b) one-file change, deploy to $S (--batch 100%, auto: ssh)" "$dall_t" "$dall_b" "$dall_c"
printf '    %-46s %8s\n' "(b) deploy time $S hosts / time 1 host" \
    "$(awk -v a="$dall_t" -v b="$done_t" 'BEGIN { printf "%.2f", a / b }')"
echo "logs: $DIR/{cold,warm,checksum,basic-warm,exec-true,status,garage-cold,garage-warm,services-cold,services-warm,ship-garage,ship-ssh,services-bare,ship-garage-shaped,services-bare-shaped,change-one,change-all,deploy-one,deploy-all}.log"

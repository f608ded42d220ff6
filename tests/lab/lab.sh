#!/usr/bin/env bash
# lab.sh — a fleet of real Debian hosts (systemd + sshd, Docker-capable) as docker
# containers on the shared network `meshlab` (10.77.0.0/16), for testing mesh.
# Debian 13 (trixie) by default; `--suite bookworm` (or LAB_SUITE=bookworm) for Debian 12.
#
#   lab.sh image [--suite S] [--rebuild]                 build mesh-lab:S-1 (once)
#   lab.sh base-image [--suite S] [--rebuild]            build local/debian:S-slim (once), a plain
#                                                        minbase image for `docker build`; print it
#   lab.sh debs [--suite S] --dir DIR PACKAGE...         put Debian S's .debs of PACKAGEs in DIR
#                                                        (cached in ~/.cache/mesh/lab-debs/S)
#   lab.sh up --name NAME --count N --slot S [--dir DIR] [--suite S]
#                                                        start NAME-1..NAME-N at 10.77.S.(10+i),
#                                                        write DIR/inventory.yml
#   lab.sh down --name NAME                              remove that lab's hosts (the network stays)
#   lab.sh down-all                                      remove every lab host and the network
#   lab.sh exec NAME-i [-- CMD...]                       docker exec into a host (default: bash)
#
# S is trixie (Debian 13, the default) or bookworm (Debian 12); labs of both suites
# coexist (each on its own --name and --slot). `debs` fetches with a private apt
# configuration (S, S-updates, S-security from this machine's Debian mirror; lists in
# ~/.cache/mesh/apt-S), so a Debian 12 controller gets Debian 13's packages.
#
# Environment: LAB_SUITE (the default for --suite), LAB_MIRROR (Debian mirror URL),
# LAB_SECURITY_MIRROR, LAB_PARALLEL (concurrent docker starts, default 10), LAB_TIMEOUT
# (seconds to wait for SSH, default 60), MESH_CACHE (instead of ~/.cache/mesh).
# Exit status 0 on success; otherwise non-zero with a one-line reason on stderr.
set -euo pipefail

readonly SUITES="trixie bookworm"
# The suite and its images, set by set_suite (LAB_SUITE, then --suite).
SUITE="" IMAGE="" BASE_IMAGE=""
readonly NETWORK=meshlab
readonly SUBNET=10.77.0.0/16
readonly SUBNET_PREFIX=10.77
readonly LABEL=mesh-lab
readonly INCLUDE=openssh-server,systemd,systemd-sysv,dbus,iproute2,ca-certificates,python3,procps,iputils-ping,curl,sudo,kmod,iptables
readonly LOCK_FILE=/tmp/mesh-lab.lock
# Units that would grab the apt lock, or that are useless or fail in a container.
readonly MASK_UNITS=(
    apt-daily.timer apt-daily-upgrade.timer apt-daily.service apt-daily-upgrade.service
    dpkg-db-backup.timer dpkg-db-backup.service
    e2scrub_all.timer e2scrub_all.service e2scrub_reap.service fstrim.timer fstrim.service
    systemd-networkd-wait-online.service
    getty@tty1.service console-getty.service getty.target
    sys-kernel-config.mount sys-kernel-debug.mount sys-kernel-tracing.mount dev-hugepages.mount
    sys-fs-fuse-connections.mount proc-sys-fs-binfmt_misc.automount proc-sys-fs-binfmt_misc.mount
    modprobe@.service systemd-modules-load.service kmod-static-nodes.service
    systemd-remount-fs.service systemd-pstore.service systemd-binfmt.service
)

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)
PARALLEL=${LAB_PARALLEL:-10}
TIMEOUT=${LAB_TIMEOUT:-60}
TMP=""

die() { echo "lab: $*" >&2; exit 1; }
log() { echo "lab: $*" >&2; }

usage() {
    sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}" >&2
    exit "${1:-2}"
}

cleanup() {
    [[ -n $TMP && -d $TMP ]] || return 0
    # debootstrap may leave /proc, /sys... mounted inside the rootfs when interrupted.
    local m
    while read -r m; do umount -l "$m" 2>/dev/null || true; done \
        < <(awk -v p="$TMP/" 'index($2, p) == 1 { print $2 }' /proc/mounts | sort -r)
    rm -rf --one-file-system "$TMP"
}
trap cleanup EXIT

make_tmp() { [[ -n $TMP ]] || TMP=$(mktemp -d "${TMPDIR:-/var/tmp}/mesh-lab.XXXXXX"); }

# Select the Debian suite (codename) and the image names that follow from it.
set_suite() {
    [[ " $SUITES " == *" ${1:-} "* ]] || die "suite '${1:-}' is not one of: $SUITES"
    SUITE=$1
    IMAGE=mesh-lab:$SUITE-1
    BASE_IMAGE=local/debian:$SUITE-slim
}

# ---------------------------------------------------------------------------
# image
# ---------------------------------------------------------------------------

# Print the URIs of every enabled apt source (one-line and deb822 formats), in apt's order.
apt_uris() {
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [[ -r $f ]] || continue
        if [[ $f == *.sources ]]; then
            awk 'tolower($1) == "uris:" { for (i = 2; i <= NF; i++) print $i }' "$f"
        else
            # deb [opts] URI suite comps...
            sed -E -n 's/^[[:space:]]*deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+).*/\2/p' "$f"
        fi
    done
}

detect_mirror() {
    if [[ -n ${LAB_MIRROR:-} ]]; then echo "${LAB_MIRROR%/}"; return; fi
    local uri
    uri=$(apt_uris | grep -E -m1 '^https?://[^[:space:]]+/debian/?$' || true)
    uri=${uri:-http://deb.debian.org/debian}
    echo "${uri%/}"
}

detect_security_mirror() {
    local mirror=$1 uri=""
    if [[ -n ${LAB_SECURITY_MIRROR:-} ]]; then echo "${LAB_SECURITY_MIRROR%/}"; return; fi
    [[ -n ${LAB_MIRROR:-} ]] \
        || uri=$(apt_uris | grep -E -m1 '^https?://[^[:space:]]+/debian-security/?$' || true)
    uri=${uri:-$mirror-security}
    echo "${uri%/}"
}

image_exists() { docker image inspect "$IMAGE" >/dev/null 2>&1; }

# apt sources in ROOTFS: <suite>, <suite>-updates, <suite>-security.
write_apt_sources() {
    local rootfs=$1 mirror=$2 security=$3
    rm -f "$rootfs/etc/apt/sources.list"
    cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
}

cmd_image() {
    local rebuild=0
    while (($#)); do
        case $1 in
            --rebuild) rebuild=1 ;;
            --suite) set_suite "${2:-}"; shift ;;
            *) die "image: unknown argument '$1'" ;;
        esac
        shift
    done
    ensure_image "$rebuild"
}

ensure_image() {
    local rebuild=${1:-0}
    ((rebuild)) || ! image_exists || return 0
    exec 8>"$LOCK_FILE.$SUITE"
    flock 8
    # Another lab.sh may have built it while we waited for the lock.
    if ((rebuild)) || ! image_exists; then build_image; fi
    exec 8>&-
}

build_image() {
    local start=$SECONDS mirror security rootfs
    command -v debootstrap >/dev/null || die "debootstrap missing (run tests/lab/prereqs.sh)"
    mirror=$(detect_mirror)
    security=$(detect_security_mirror "$mirror")
    make_tmp
    rootfs=$TMP/rootfs
    log "building $IMAGE from $mirror (security: $security) in $rootfs"

    debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$rootfs" "$mirror" \
        >"$TMP/debootstrap.log" 2>&1 \
        || { tail -n 20 "$TMP/debootstrap.log" >&2; die "debootstrap failed"; }
    log "debootstrap done after $((SECONDS - start)) s"

    write_apt_sources "$rootfs" "$mirror" "$security"

    # sshd: key-only root login, tolerant of a controller opening many connections.
    cat >"$rootfs/etc/ssh/sshd_config.d/10-mesh-lab.conf" <<'EOF'
# mesh test lab
PermitRootLogin prohibit-password
PasswordAuthentication no
UseDNS no
MaxStartups 200:30:400
MaxSessions 64
# Host keys are generated at first boot (ssh-hostkeys.service). No RSA key: 3072-bit
# RSA generation doubles the boot CPU of a 50-host lab on 2 cores.
HostKey /etc/ssh/ssh_host_ed25519_key
HostKey /etc/ssh/ssh_host_ecdsa_key
EOF

    # Every lab host gets its own host keys, generated at first boot.
    rm -f "$rootfs"/etc/ssh/ssh_host_*
    cat >"$rootfs/etc/systemd/system/ssh-hostkeys.service" <<'EOF'
[Unit]
Description=Generate SSH host keys (mesh lab, first boot)
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key
ExecStart=/usr/bin/ssh-keygen -q -t ecdsa -N "" -f /etc/ssh/ssh_host_ecdsa_key
RemainAfterExit=yes

[Install]
WantedBy=ssh.service multi-user.target
EOF
    chroot "$rootfs" systemctl enable ssh-hostkeys.service >/dev/null 2>&1 \
        || die "cannot enable ssh-hostkeys.service"
    chroot "$rootfs" systemctl mask "${MASK_UNITS[@]}" >/dev/null 2>&1 \
        || die "cannot mask units"

    # Per-container identity: machine-id is generated at boot; docker provides
    # hostname, hosts and resolv.conf.
    : >"$rootfs/etc/machine-id"
    rm -f "$rootfs/var/lib/dbus/machine-id"
    : >"$rootfs/etc/resolv.conf"
    echo 'LANG=C.UTF-8' >"$rootfs/etc/default/locale"

    chroot "$rootfs" apt-get clean
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log "$rootfs"/var/cache/debconf/*-old

    local old_id
    old_id=$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)
    tar -C "$rootfs" --numeric-owner -c . \
        | docker import \
            --change 'CMD ["/lib/systemd/systemd"]' \
            --change 'ENV container=docker' \
            - "$IMAGE" >/dev/null \
        || die "docker import failed"
    rm -rf --one-file-system "$rootfs"
    # The previous build, if no container uses it any more.
    [[ -z $old_id ]] || docker image rm "$old_id" >/dev/null 2>&1 || true
    log "image $IMAGE built in $((SECONDS - start)) s"
}

# ---------------------------------------------------------------------------
# base-image: local/debian:bookworm-slim, the FROM of images built on the controller
# ---------------------------------------------------------------------------

base_image_exists() { docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; }

cmd_base_image() {
    local rebuild=0
    while (($#)); do
        case $1 in
            --rebuild) rebuild=1 ;;
            --suite) set_suite "${2:-}"; shift ;;
            *) die "base-image: unknown argument '$1'" ;;
        esac
        shift
    done
    if ((rebuild)) || ! base_image_exists; then
        exec 8>"$LOCK_FILE.base.$SUITE"
        flock 8
        # Another caller may have built it while we waited for the lock.
        if ((rebuild)) || ! base_image_exists; then build_base_image; fi
        exec 8>&-
    fi
    echo "$BASE_IMAGE"
}

build_base_image() {
    local start=$SECONDS mirror security rootfs
    local -a include=()
    command -v debootstrap >/dev/null || die "debootstrap missing (run tests/lab/prereqs.sh)"
    mirror=$(detect_mirror)
    security=$(detect_security_mirror "$mirror")
    # apt in the image needs CA certificates to use an https mirror.
    [[ $mirror != https://* && $security != https://* ]] || include=(--include=ca-certificates)
    make_tmp
    rootfs=$TMP/base-rootfs
    log "building $BASE_IMAGE from $mirror (security: $security) in $rootfs"

    debootstrap --variant=minbase "${include[@]}" "$SUITE" "$rootfs" "$mirror" \
        >"$TMP/debootstrap-base.log" 2>&1 \
        || { tail -n 20 "$TMP/debootstrap-base.log" >&2; die "debootstrap failed"; }
    log "debootstrap done after $((SECONDS - start)) s"

    write_apt_sources "$rootfs" "$mirror" "$security"
    # Like Debian's official slim images: no docs in derived images, no .debs left behind.
    cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
    cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    : >"$rootfs/etc/machine-id"
    : >"$rootfs/etc/resolv.conf"
    : >"$rootfs/etc/hostname"
    chroot "$rootfs" apt-get clean
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log "$rootfs"/var/cache/debconf/*-old

    tar -C "$rootfs" --numeric-owner -c . \
        | docker import \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'CMD ["bash"]' \
            - "$BASE_IMAGE" >/dev/null \
        || die "docker import failed"
    rm -rf --one-file-system "$rootfs"
    log "image $BASE_IMAGE built in $((SECONDS - start)) s"
}

# ---------------------------------------------------------------------------
# up
# ---------------------------------------------------------------------------

ensure_network() {
    docker network inspect "$NETWORK" >/dev/null 2>&1 && return 0
    # Labs start in parallel (tests): one creates the network, the others wait for it.
    (
        flock 7
        docker network inspect "$NETWORK" >/dev/null 2>&1 ||
            docker network create --subnet "$SUBNET" "$NETWORK" >/dev/null
    ) 7>"$LOCK_FILE.net" || die "cannot create docker network $NETWORK ($SUBNET)"
}

ssh_opts() {
    local key=$1
    printf '%s\n' -F /dev/null -i "$key" -o IdentitiesOnly=yes -o BatchMode=yes \
        -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
        -o ConnectTimeout=2 -o LogLevel=ERROR
}

# Create, key and start one host. Runs in the background; success leaves $TMP/started.NAME.
start_host() {
    local lab=$1 cname=$2 ip=$3
    {
        docker create --name "$cname" --hostname "$cname" --label "$LABEL=$lab" \
            --label "$LABEL.suite=$SUITE" \
            --network "$NETWORK" --ip "$ip" --stop-signal SIGRTMIN+3 \
            --cgroupns=host -v /sys/fs/cgroup:/sys/fs/cgroup:rw --tmpfs /run --tmpfs /run/lock \
            --cap-add ALL --cap-drop SYS_RESOURCE \
            --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
            --device-cgroup-rule 'a *:* rwm' -v /var/lib/docker \
            "$IMAGE" >/dev/null \
            && docker cp "$TMP/authkeys/.ssh" "$cname:/root/" \
            && docker cp "$TMP/docker.service.d" "$cname:/etc/systemd/system/" \
            && docker start "$cname" >/dev/null \
            && touch "$TMP/started.$cname"
    } >"$TMP/start.$cname.log" 2>&1
}

# Install the lab key into an already running host.
rekey_host() {
    local cname=$1
    docker cp "$TMP/authkeys/.ssh" "$cname:/root/" >"$TMP/start.$cname.log" 2>&1 \
        && touch "$TMP/started.$cname"
}

# Poll until the host accepts SSH with the lab key; success leaves $TMP/up.NAME.
wait_host() {
    local cname=$1 ip=$2 key=$3 deadline=$4 n=0
    local -a opts
    mapfile -t opts < <(ssh_opts "$key")
    while ((SECONDS < deadline)); do
        if ssh "${opts[@]}" "root@$ip" true </dev/null >/dev/null 2>&1; then
            touch "$TMP/up.$cname"
            return 0
        fi
        # Every ~5 s: give up early if the container died.
        if ((++n % 10 == 0)) \
            && [[ $(docker inspect -f '{{.State.Running}}' "$cname" 2>/dev/null) != true ]]; then
            echo "container is not running" >"$TMP/why.$cname"
            return 1
        fi
        sleep 0.5
    done
    echo "no SSH within ${TIMEOUT} s" >"$TMP/why.$cname"
    return 1
}

# Run "$@ ITEM" for each ITEM read from stdin, at most $PARALLEL at a time.
run_parallel() {
    local item running=0
    while read -r -a item; do
        "$@" "${item[@]}" &
        if ((++running >= PARALLEL)); then
            wait -n || true
            running=$((running - 1))
        fi
    done
    wait || true
}

write_inventory() {
    local dir=$1 lab=$2 count=$3 slot=$4 i ip tmpf
    tmpf=$(mktemp "$dir/.inventory.XXXXXX")
    {
        echo "# mesh test lab '$lab' (Debian $SUITE hosts) — generated by tests/lab/lab.sh up; do not edit."
        echo "ssh:"
        echo "  user: root"
        echo "  port: 22"
        echo "  identity_file: $dir/id_ed25519"
        echo "  options:"
        echo "    UserKnownHostsFile: $dir/known_hosts"
        echo "    KexAlgorithms: curve25519-sha256"
        echo "groups:"
        echo "  lab:"
        echo "    hosts:"
        for ((i = 1; i <= count; i++)); do
            ip=$SUBNET_PREFIX.$slot.$((10 + i))
            echo "      $lab-$i: { address: $ip, zone: z$(((i - 1) % 3 + 1)), overlay_ip: $ip }"
        done
    } >"$tmpf"
    chmod 644 "$tmpf"
    mv -f "$tmpf" "$dir/inventory.yml"
    : >"$dir/known_hosts"
}

cmd_up() {
    local lab="" count="" slot="" dir=""
    while (($#)); do
        case $1 in
            --name) lab=${2:-}; shift ;;
            --count) count=${2:-}; shift ;;
            --slot) slot=${2:-}; shift ;;
            --dir) dir=${2:-}; shift ;;
            --suite) set_suite "${2:-}"; shift ;;
            *) die "up: unknown argument '$1'" ;;
        esac
        shift
    done
    [[ $lab =~ ^[a-z0-9][a-z0-9-]*$ ]] || die "up: --name must match [a-z0-9][a-z0-9-]*"
    if ! [[ $count =~ ^[0-9]{1,3}$ ]] || ((count < 1 || count > 244)); then
        die "up: --count must be 1..244"
    fi
    if ! [[ $slot =~ ^[0-9]{1,3}$ ]] || ((slot > 255)); then
        die "up: --slot must be 0..255"
    fi
    local start=$SECONDS
    dir=${dir:-$REPO_ROOT/target/lab/$lab}
    mkdir -p "$dir" || die "up: cannot create $dir"
    dir=$(cd "$dir" && pwd)
    local key=$dir/id_ed25519

    ensure_image
    ensure_network
    if [[ ! -f $key ]]; then
        rm -f "$key.pub"
        ssh-keygen -q -t ed25519 -N '' -C "mesh-lab-$lab" -f "$key" || die "up: ssh-keygen failed"
    fi
    [[ -f $key.pub ]] || ssh-keygen -y -f "$key" >"$key.pub" || die "up: cannot derive $key.pub"
    make_tmp
    mkdir -p "$TMP/authkeys/.ssh"
    chmod 700 "$TMP/authkeys/.ssh"
    install -m 600 "$key.pub" "$TMP/authkeys/.ssh/authorized_keys"
    # For the Docker a host may get later: Docker 23+ fails every bridge-network
    # container when it cannot disable IPv6 on its eth0, and a lab host's /proc/sys
    # is read-only (a real machine's is not). Docker 20.10 ignores the variable.
    mkdir -p "$TMP/docker.service.d"
    printf '%s\n' '# mesh test lab (tests/lab/lab.sh): /proc/sys is read-only in a lab host' \
        '[Service]' 'Environment=DOCKER_ALLOW_IPV6_ON_IPV4_INTERFACE=1' \
        >"$TMP/docker.service.d/mesh-lab.conf"

    # Current state: this lab's containers, and who holds which IP on the network.
    local image_id line cname ip i
    image_id=$(docker image inspect -f '{{.Id}}' "$IMAGE")
    declare -A have=() holder=()
    while read -r line; do
        [[ -n $line ]] && have[${line%% *}]=${line#* }
    done < <(docker ps -aq --filter "label=$LABEL=$lab" \
        | xargs -r docker inspect -f \
            "{{slice .Name 1}} {{.State.Running}} {{.Image}} {{with index .NetworkSettings.Networks \"$NETWORK\"}}{{.IPAddress}}{{end}}")
    while read -r cname ip; do
        [[ -n $cname ]] && holder[${ip%/*}]=$cname
    done < <(docker network inspect -f '{{range .Containers}}{{.Name}} {{.IPv4Address}}{{"\n"}}{{end}}' "$NETWORK")

    local -a create=() reuse=() remove=()
    declare -A want=()
    for ((i = 1; i <= count; i++)); do
        cname=$lab-$i
        ip=$SUBNET_PREFIX.$slot.$((10 + i))
        want[$cname]=$ip
        if [[ ${have[$cname]:-} == "true $image_id $ip" ]]; then
            reuse+=("$cname $ip")
            continue
        fi
        if [[ -n ${holder[$ip]:-} && ${holder[$ip]} != "$cname" && -z ${have[${holder[$ip]}]:-} ]]; then
            die "up: $ip (slot $slot) is taken by container ${holder[$ip]}; pick another --slot"
        fi
        if [[ -z ${have[$cname]:-} ]] && docker inspect "$cname" >/dev/null 2>&1; then
            die "up: a container named $cname exists but is not part of lab $lab"
        fi
        [[ -n ${have[$cname]:-} ]] && remove+=("$cname")
        create+=("$cname $ip")
    done
    for cname in "${!have[@]}"; do
        [[ -n ${want[$cname]:-} ]] || remove+=("$cname")
    done
    if ((${#remove[@]})); then
        log "removing ${#remove[@]} stale host(s)"
        docker rm -fv "${remove[@]}" >/dev/null || die "up: cannot remove ${remove[*]}"
    fi

    log "[$lab] reusing ${#reuse[@]}, starting ${#create[@]} host(s)"
    local lab_arg=$lab
    ((${#create[@]})) && printf '%s\n' "${create[@]}" | run_parallel start_host "$lab_arg"
    ((${#reuse[@]})) && printf '%s\n' "${reuse[@]%% *}" | run_parallel rekey_host
    local failed=0
    for line in "${create[@]}" "${reuse[@]}"; do
        cname=${line%% *}
        if [[ ! -e $TMP/started.$cname ]]; then
            log "$cname failed to start:"
            sed 's/^/    /' "$TMP/start.$cname.log" >&2
            failed=$((failed + 1))
        fi
    done
    ((failed == 0)) || die "up: $failed host(s) of lab $lab failed to start"
    ((${#create[@]} == 0)) || log "[$lab] ${#create[@]} host(s) started after $((SECONDS - start)) s"

    # Wait for all hosts at once.
    local deadline=$((SECONDS + TIMEOUT)) pids=()
    for line in "${create[@]}" "${reuse[@]}"; do
        wait_host "${line%% *}" "${line#* }" "$key" "$deadline" &
        pids+=($!)
    done
    wait "${pids[@]}" 2>/dev/null || true
    for line in "${create[@]}" "${reuse[@]}"; do
        cname=${line%% *}
        if [[ ! -e $TMP/up.$cname ]]; then
            log "$cname (${line#* }) is not up: $(cat "$TMP/why.$cname" 2>/dev/null || echo unknown). Last logs:"
            docker logs --tail 30 "$cname" 2>&1 | sed 's/^/    /' >&2 || true
            # systemd logs to its journal, not to docker's log: show that too.
            timeout 10 docker exec "$cname" journalctl -b --no-pager -n 30 2>&1 \
                | sed 's/^/    journal: /' >&2 || true
            failed=$((failed + 1))
        fi
    done
    ((failed == 0)) || die "up: $failed host(s) of lab $lab did not come up within ${TIMEOUT} s"

    write_inventory "$dir" "$lab" "$count" "$slot"
    log "[$lab] $count host(s) up in $((SECONDS - start)) s"
    echo "$dir/inventory.yml"
}

# ---------------------------------------------------------------------------
# down, down-all, exec
# ---------------------------------------------------------------------------

remove_network_if_unused() {
    docker network inspect "$NETWORK" >/dev/null 2>&1 || return 0
    [[ -z $(docker ps -aq --filter "network=$NETWORK") ]] || return 0
    docker network rm "$NETWORK" >/dev/null 2>&1 || log "network $NETWORK still in use, kept"
}

remove_by_label() {
    local filter=$1 ids
    ids=$(docker ps -aq --filter "label=$filter")
    [[ -z $ids ]] && return 0
    # shellcheck disable=SC2086 # one id per word
    docker rm -fv $ids >/dev/null || die "cannot remove containers ($filter)"
    log "removed $(wc -w <<<"$ids") host(s)"
}

cmd_down() {
    local lab=""
    while (($#)); do
        case $1 in
            --name) lab=${2:-}; shift ;;
            *) die "down: unknown argument '$1'" ;;
        esac
        shift
    done
    [[ -n $lab ]] || die "down: --name is required"
    # The shared network stays: another lab may be starting on it right now
    # (parallel tests); `down-all` removes it.
    remove_by_label "$LABEL=$lab"
}

cmd_down_all() {
    (($# == 0)) || die "down-all: takes no arguments"
    remove_by_label "$LABEL"
    remove_network_if_unused
}

cmd_exec() {
    local host=${1:-}
    [[ -n $host ]] || die "exec: usage: exec NAME-i [-- CMD...]"
    shift
    [[ ${1:-} == -- ]] && shift
    (($#)) || set -- bash
    local -a flags=(-i)
    [[ -t 0 && -t 1 ]] && flags+=(-t)
    exec docker exec "${flags[@]}" "$host" "$@"
}

# ---------------------------------------------------------------------------
# debs: Debian packages of the lab's suite, fetched on this (maybe older) machine
# ---------------------------------------------------------------------------

cmd_debs() {
    local dest="" p
    local -a pkgs=()
    while (($#)); do
        case $1 in
            --dir) dest=${2:-}; shift ;;
            --suite) set_suite "${2:-}"; shift ;;
            -*) die "debs: unknown argument '$1'" ;;
            *) pkgs+=("$1") ;;
        esac
        shift
    done
    [[ -n $dest && ${#pkgs[@]} -gt 0 ]] || die "debs: usage: debs [--suite S] --dir DIR PACKAGE..."
    local base=${MESH_CACHE:-$HOME/.cache/mesh}
    # Not $base/debs: that is mesh's own content-addressed cache (MESH_CACHE).
    local cache=$base/lab-debs/$SUITE apt=$base/apt-$SUITE
    mkdir -p "$cache" "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/empty" "$dest" \
        || die "debs: cannot create $cache, $apt or $dest"
    exec 9>"$cache.lock"
    flock 9
    have() { compgen -G "$cache/${1}_*.deb" >/dev/null; }
    local -a missing=()
    for p in "${pkgs[@]}"; do have "$p" || missing+=("$p"); done
    if ((${#missing[@]})); then
        # A private apt configuration for the suite, as its hosts' sources have it
        # (S, S-updates, S-security): this machine's own apt state is untouched.
        local mirror security key=/usr/share/keyrings/debian-archive-keyring.gpg
        mirror=$(detect_mirror)
        security=$(detect_security_mirror "$mirror")
        printf 'deb [signed-by=%s] %s main\n' "$key" "$mirror $SUITE" "$key" "$mirror $SUITE-updates" \
            "$key" "$security $SUITE-security" >"$apt/sources.list"
        local -a opts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o "Dir::Etc::SourceParts=$apt/empty"
            -o "Dir::Etc::PreferencesParts=$apt/empty" -o "Dir::Etc::Preferences=$apt/empty/none"
            -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o Dir::State::Status=/dev/null
            -o Acquire::Languages=none -o APT::Sandbox::User=root
            -o "APT::Architecture=$(dpkg --print-architecture)")
        apt-get -qq "${opts[@]}" update >/dev/null || die "debs: apt-get update for $SUITE failed"
        local part
        part=$(mktemp -d "$cache.part.XXXXXX")
        (cd "$part" && apt-get -qq "${opts[@]}" download "${missing[@]}" >/dev/null) \
            || { rm -rf "$part"; die "debs: downloading ${missing[*]} for $SUITE failed"; }
        mv "$part"/*.deb "$cache"/ && rmdir "$part"
    fi
    for p in "${pkgs[@]}"; do cp "$cache/${p}"_*.deb "$dest"/; done
}

main() {
    (($#)) || usage
    local cmd=$1
    shift
    [[ $cmd == -h || $cmd == --help || $cmd == help ]] && usage 0
    [[ $(id -u) -eq 0 ]] || die "must run as root"
    set_suite "${LAB_SUITE:-trixie}"
    command -v docker >/dev/null || die "docker missing (run tests/lab/prereqs.sh)"
    case $cmd in
        image) cmd_image "$@" ;;
        base-image) cmd_base_image "$@" ;;
        up) cmd_up "$@" ;;
        down) cmd_down "$@" ;;
        down-all) cmd_down_all "$@" ;;
        exec) cmd_exec "$@" ;;
        debs) cmd_debs "$@" ;;
        *) die "unknown command '$cmd' (image, base-image, up, down, down-all, exec, debs)" ;;
    esac
}

main "$@"

#!/usr/bin/env bash
# prereqs.sh — make this (Debian, root) machine ready to run the mesh test lab.
#
# Idempotent and fast when everything is already in place:
#   - installs the missing ones of docker.io debootstrap dpkg-dev openssh-client openssh-server
#     iproute2 make zstd curl gpg (apt-get update once, only when something is missing;
#     gpg signs the demo mirror's InRelease);
#   - starts dockerd in the background when `docker info` fails, waits up to 60 s;
#   - raises the inotify limits that many systemd containers need;
#   - gives the controller BuildKit when `docker buildx version` fails: Debian 13's
#     docker-buildx plugin, copied out of its .deb (lab.sh debs) into
#     /usr/local/lib/docker/cli-plugins (Debian 12 has no buildx package).
# A /usr/local/bin/docker client newer than Debian's daemon is fine and kept.
set -euo pipefail

PACKAGES=(docker.io debootstrap dpkg-dev openssh-client openssh-server iproute2 make zstd curl gpg)
INOTIFY_INSTANCES=8192
INOTIFY_WATCHES=1048576
DOCKERD_LOG=/var/log/mesh-dockerd.log
# A directory the docker CLI searches for plugins, system-wide.
BUILDX_DIR=/usr/local/lib/docker/cli-plugins

die() { echo "prereqs: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root"

# --- packages --------------------------------------------------------------
missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null || true)
    [[ $status == ii* ]] || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "prereqs: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null || die "apt-get update failed"
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]} failed"
fi

# --- kernel limits ---------------------------------------------------------
raise_sysctl() {
    local key=$1 want=$2 have
    have=$(sysctl -n "$key")
    if ((have < want)); then
        sysctl -q -w "$key=$want" || die "cannot set $key=$want"
    fi
}
raise_sysctl fs.inotify.max_user_instances "$INOTIFY_INSTANCES"
raise_sysctl fs.inotify.max_user_watches "$INOTIFY_WATCHES"

# --- docker daemon ---------------------------------------------------------
if ! docker info >/dev/null 2>&1; then
    command -v dockerd >/dev/null || die "dockerd not found (docker.io not installed?)"
    echo "prereqs: starting dockerd (log: $DOCKERD_LOG)"
    nohup dockerd </dev/null >"$DOCKERD_LOG" 2>&1 &
    for _ in $(seq 120); do
        docker info >/dev/null 2>&1 && break
        sleep 0.5
    done
    docker info >/dev/null 2>&1 || die "dockerd did not come up within 60 s (see $DOCKERD_LOG)"
fi

# --- buildx (BuildKit) for the controller's builds --------------------------
if ! docker buildx version >/dev/null 2>&1; then
    echo "prereqs: installing docker-buildx from Debian 13 into $BUILDX_DIR"
    tmp=$(mktemp -d)
    LAB_SUITE=trixie "$(dirname "${BASH_SOURCE[0]}")/lab.sh" debs --dir "$tmp" docker-buildx \
        || { rm -rf "$tmp"; die "cannot fetch Debian 13's docker-buildx"; }
    dpkg-deb -x "$tmp"/docker-buildx_*.deb "$tmp/root" || { rm -rf "$tmp"; die "cannot unpack docker-buildx"; }
    install -D -m 755 "$tmp/root/usr/libexec/docker/cli-plugins/docker-buildx" "$BUILDX_DIR/docker-buildx" \
        || { rm -rf "$tmp"; die "cannot install $BUILDX_DIR/docker-buildx"; }
    rm -rf "$tmp"
    docker buildx version >/dev/null 2>&1 || die "docker buildx still missing after installing $BUILDX_DIR/docker-buildx"
fi

#!/bin/sh
# Managed by mesh: the non-file steps of CrowdSec 1.4.6 + crowdsec-firewall-bouncer 0.0.25
# (Debian bookworm packages), run after `apt-get install crowdsec crowdsec-firewall-bouncer`
# with the pre-seeded files in place. Offline: nothing here touches the network.
#
#   1. enable the Traefik collection and parser from the offline hub (symlinks: `cscli
#      collections install` would download them);
#   2. provide the data file the http-path-traversal-probing scenario reads (Debian ships
#      it as path_traversal.txt, the scenario opens http_path_traversal.txt);
#   3. register the bouncer's API key (the api_key of its .yaml.local) with the local API;
#   4. restart crowdsec / the bouncer when a file they read changed since the last run,
#      start them when they are not running, and check that both stay active.
#
# Usage: setup.sh          do it; prints "changed" on stdout if it changed anything,
#                          nothing otherwise (a second run prints nothing)
#        setup.sh --check  read-only: exit 0 when there is nothing to do, 1 otherwise
# Errors: a message on stderr and exit status 2.
set -eu

ETC=/etc/crowdsec
HUB=/var/lib/crowdsec/hub
DATA=/var/lib/crowdsec/data
BOUNCER_CONFIG=$ETC/bouncers/crowdsec-firewall-bouncer.yaml
BOUNCER_NAME=mesh-firewall-bouncer
# Checksums of what each service read at its last (re)start by this script.
STAMP_CROWDSEC=/var/lib/crowdsec/mesh-crowdsec.sha256
STAMP_BOUNCER=/var/lib/crowdsec/mesh-bouncer.sha256
CROWDSEC_INPUTS="$ETC/config.yaml.local $ETC/online_api_credentials.yaml $ETC/acquis.yaml $ETC/acquis.d/traefik.yaml"
BOUNCER_INPUTS="$BOUNCER_CONFIG.local"

CHECK=0
case "${1:-}" in
    --check) CHECK=1 ;;
    "") ;;
    *) echo "usage: setup.sh [--check]" >&2; exit 2 ;;
esac

changed=0
restart_crowdsec=0
restart_bouncer=0

die() { echo "crowdsec setup: $*" >&2; exit 2; }
# todo WHAT: something must change. --check stops here with status 1.
todo() {
    if [ "$CHECK" = 1 ]; then
        echo "crowdsec setup: to do: $*" >&2
        exit 1
    fi
    changed=1
}

if ! command -v cscli >/dev/null 2>&1; then
    [ "$CHECK" = 1 ] && todo "install crowdsec"
    die "cscli not found. Fix: apt-get install crowdsec crowdsec-firewall-bouncer first"
fi
[ -f "$BOUNCER_CONFIG.local" ] || die "$BOUNCER_CONFIG.local is missing. Fix: write it before running this script"

# link TARGET LINK: make LINK a symlink to TARGET (which must exist).
link() {
    [ -e "$1" ] || die "$1 does not exist (is the offline hub in place?)"
    if [ "$(readlink "$2" 2>/dev/null || true)" != "$1" ]; then
        todo "link $2"
        mkdir -p "$(dirname "$2")"
        ln -sfn "$1" "$2"
        restart_crowdsec=1
    fi
}

# 1. Traefik: collection + parser. The collection's other dependency, base-http-scenarios
#    (http-logs parser, HTTP scenarios, http-cve), is enabled by the postinst on first
#    install, with the nginx and apache2 collections that pull it in.
link "$HUB/collections/crowdsecurity/traefik.yaml" "$ETC/collections/traefik.yaml"
link "$HUB/parsers/s01-parse/crowdsecurity/traefik-logs.yaml" "$ETC/parsers/s01-parse/traefik-logs.yaml"

# 2. The data file name scenarios/http-path-traversal-probing.yaml opens.
link "$DATA/path_traversal.txt" "$DATA/http_path_traversal.txt"

# sums FILES...: their checksums (a missing file is left out, so it counts as a change).
sums() { sha256sum "$@" 2>/dev/null || true; }

# shellcheck disable=SC2086 # the input lists are split on purpose
if [ "$(sums $CROWDSEC_INPUTS)" != "$(cat "$STAMP_CROWDSEC" 2>/dev/null || true)" ]; then
    todo "restart crowdsec (configuration changed)"
    restart_crowdsec=1
fi
# shellcheck disable=SC2086
if [ "$(sums $BOUNCER_INPUTS)" != "$(cat "$STAMP_BOUNCER" 2>/dev/null || true)" ]; then
    todo "restart the bouncer (configuration changed)"
    restart_bouncer=1
fi

# 3. Bouncer registration. The local API stores sha512(key) in hex: look for that.
key=$(sed -n 's/^api_key:[[:space:]]*//p' "$BOUNCER_CONFIG.local" | tr -d "\"' \r" | tail -n 1)
[ -n "$key" ] || die "no api_key in $BOUNCER_CONFIG.local"
hash=$(printf '%s' "$key" | sha512sum | cut -d' ' -f1)
if ! cscli bouncers list -o json 2>/dev/null | grep -q "\"api_key\": \"$hash\""; then
    todo "register bouncer $BOUNCER_NAME"
    # Another key under our name (the key changed), and the package's own registration if
    # it made one (installed without the pre-seeded .yaml.local): remove both.
    if cscli bouncers list -o raw | cut -d, -f1 | grep -qx "$BOUNCER_NAME"; then
        cscli --error bouncers delete "$BOUNCER_NAME" >/dev/null
    fi
    if [ -f "$BOUNCER_CONFIG.id" ]; then
        old=$(cat "$BOUNCER_CONFIG.id")
        if [ "$old" != "$BOUNCER_NAME" ] && cscli bouncers list -o raw | cut -d, -f1 | grep -qx "$old"; then
            cscli --error bouncers delete "$old" >/dev/null
        fi
    fi
    cscli --error bouncers add "$BOUNCER_NAME" -k "$key" >/dev/null
    restart_bouncer=1
fi
# The package's postrm (purge) unregisters the bouncer named in this file.
if [ "$(cat "$BOUNCER_CONFIG.id" 2>/dev/null || true)" != "$BOUNCER_NAME" ]; then
    todo "write $BOUNCER_CONFIG.id"
    echo "$BOUNCER_NAME" >"$BOUNCER_CONFIG.id"
fi

# 4. Services. crowdsec first: `systemctl restart` returns once the local API answers
#    (Type=notify), and the bouncer exits (status 0, unit inactive) if its first pull fails.
if [ "$restart_crowdsec" = 1 ]; then
    systemctl restart crowdsec.service
elif ! systemctl is-active --quiet crowdsec.service; then
    todo "start crowdsec"
    systemctl start crowdsec.service
fi
if [ "$restart_bouncer" = 1 ]; then
    systemctl restart crowdsec-firewall-bouncer.service
elif ! systemctl is-active --quiet crowdsec-firewall-bouncer.service; then
    todo "start the bouncer"
    systemctl start crowdsec-firewall-bouncer.service
fi
# systemd reports the bouncer started before its first pull: give a bad key or URL a moment.
if [ "$changed" = 1 ]; then
    sleep 1
fi
for unit in crowdsec.service crowdsec-firewall-bouncer.service; do
    systemctl is-active --quiet "$unit" ||
        die "$unit is not active. Fix: see journalctl -u $unit and /var/log/crowdsec*.log"
done

# Stamps last, so that a failed run is redone in full by the next one.
if [ "$restart_crowdsec" = 1 ]; then
    # shellcheck disable=SC2086
    sums $CROWDSEC_INPUTS >"$STAMP_CROWDSEC"
fi
if [ "$restart_bouncer" = 1 ]; then
    # shellcheck disable=SC2086
    sums $BOUNCER_INPUTS >"$STAMP_BOUNCER"
fi

if [ "$changed" = 1 ]; then
    echo changed
fi

# Care hook: runs on each host `mesh care` upgrades, after the upgrade, with
# the host's template variables exported (HOSTNAME, ZONE, ...). This one keeps
# a dated archive of the services' data (/containers/data), the last 7.
set -eu
if [ ! -d /containers/data ]; then
    echo "$HOSTNAME: no /containers/data, nothing to back up"
    exit 0
fi
mkdir -p /var/backups/mesh
chmod 700 /var/backups/mesh
out=/var/backups/mesh/data-$(date -u +%Y%m%dT%H%M%SZ).tar.gz
tar -C /containers -czf "$out" data
echo "$HOSTNAME: /containers/data backed up to $out"
ls -1t /var/backups/mesh/data-*.tar.gz | tail -n +8 | xargs -r rm -f

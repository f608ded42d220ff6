#!/usr/bin/env bash
# base-image.sh — make sure the docker image local/debian:<suite>-slim exists in the
# controller's docker (LAB_SUITE: trixie by default, or bookworm), and print its name. Images that tests `docker build` on the
# controller start FROM it: no registry is reachable here, so it is debootstrapped
# (minbase, apt sources of the detected Debian mirror, ≈1-2 min) once; then a fast no-op.
#
# The work is `tests/lab/lab.sh base-image` (same mirror detection and cleanup as the lab
# image; flock against parallel callers). Environment: LAB_SUITE, LAB_MIRROR, LAB_SECURITY_MIRROR.
# Logs go to stderr; stdout is the image name only.
set -euo pipefail

readonly BASE_IMAGE=local/debian:${LAB_SUITE:-trixie}-slim

if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    echo "$BASE_IMAGE"
    exit 0
fi
exec "$(dirname "${BASH_SOURCE[0]}")/lab.sh" base-image "$@"

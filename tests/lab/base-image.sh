#!/usr/bin/env bash
# base-image.sh [SUITE] [--rebuild] — make sure the docker image local/debian:SUITE-slim
# exists in the controller's docker, and print its name. SUITE is trixie (Debian 13, the
# default, or LAB_SUITE) or bookworm (Debian 12). Images that tests `docker build` on the
# controller start FROM it: no registry is reachable here, so it is debootstrapped
# (minbase, apt sources of the detected Debian mirror, ≈1 min) once; then a fast no-op.
#
# The work is `tests/lab/lab.sh base-image --suite SUITE` (same mirror detection and
# cleanup as the lab image; flock against parallel callers). Environment: LAB_SUITE,
# LAB_MIRROR, LAB_SECURITY_MIRROR. Logs go to stderr; stdout is the image name only.
set -euo pipefail

suite=${LAB_SUITE:-trixie}
if [[ ${1:-} != "" && ${1:-} != -* ]]; then
    suite=$1
    shift
fi
case $suite in
    trixie | bookworm) ;;
    *) echo "base-image: suite '$suite' is not one of: trixie bookworm" >&2; exit 2 ;;
esac
readonly BASE_IMAGE=local/debian:$suite-slim

if [[ ${1:-} != --rebuild ]] && docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    echo "$BASE_IMAGE"
    exit 0
fi
exec "$(dirname "${BASH_SOURCE[0]}")/lab.sh" base-image --suite "$suite" "$@"

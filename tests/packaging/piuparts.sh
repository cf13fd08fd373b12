#!/usr/bin/env bash
# piuparts over the .deb: install, remove and purge in a fresh Debian 12 chroot, then "nothing
# left behind". Run by make test-packaging. Usage: piuparts.sh DEB
#   SEALTRAIL_PURGE_EVIDENCE=1: purge also deletes the evidence (journal, keys); without it the
#     kept keys would be reported as left behind, which is by design (docs/packaging.md).
#   --ignore: what systemd itself (pulled in as a dependency) leaves when piuparts purges it.
# The base chroot is cached in build/piuparts (piuparts --basetgz), keyed by this file's hash.
set -euo pipefail

DEB=$(realpath "${1:?usage: piuparts.sh DEB}")
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=$HERE/../../build/piuparts
MIRROR=${SEALTRAIL_TEST_MIRROR:-http://deb.debian.org/debian}
mkdir -p "$OUT/tmp"
BASE=$OUT/base-$(sha256sum "$HERE/piuparts.sh" | cut -c1-12).tgz
if [ -s "$BASE" ]; then
    base=(-b "$BASE")
else
    base=(-s "$BASE") # made by this run, used by the next
fi
ignores=()
for path in /root/.ssh/ /var/cache/private/ /var/lib/private/ /var/lib/systemd/coredump/ \
    /var/lib/systemd/pstore/ /var/log/private/; do
    ignores+=(--ignore="$path")
done
SEALTRAIL_PURGE_EVIDENCE=1 piuparts -d bookworm -m "$MIRROR" -t "$OUT/tmp" "${base[@]}" \
    --no-upgrade-test "${ignores[@]}" "$DEB" >"$OUT/piuparts.log" 2>&1 || {
    grep -E "ERROR|FAIL" -A12 "$OUT/piuparts.log" | head -60 >&2
    echo "piuparts failed: $OUT/piuparts.log" >&2
    exit 1
}
grep -E "PASS: All tests" "$OUT/piuparts.log"

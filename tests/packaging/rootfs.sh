#!/usr/bin/env bash
# The tier-4 container's root filesystem: Debian 12 (bookworm) with systemd as PID 1 and the
# sealtrail package's run-time dependencies already installed, so `apt-get install ./x.deb`
# inside resolves without a mirror (the container has a private network: loopback only) and
# `apt-get purge` can be compared with the file list from before the install.
# Usage: rootfs.sh OUTDIR    writes OUTDIR/root (atomically: built in OUTDIR/root.tmp).
# conftest.py keys the cache on a hash of THIS file: a change rebuilds it.
set -euo pipefail

OUT=${1:?usage: rootfs.sh OUTDIR}
SUITE=bookworm
MIRROR=${SEALTRAIL_TEST_MIRROR:-http://deb.debian.org/debian}
PACKAGES=(
    systemd systemd-sysv dbus         # PID 1, systemctl; dbus for systemctl show/reload
    python3                           # the package's interpreter (its venv is built against it)
    libbpf1 libssl3                   # the loader (ctypes) and the native core's libcrypto
    patchelf                          # postinst: the agent's private interpreter and loader
    e2fsprogs                         # chattr, for the evidence purge (append-only journal)
    procps                            # ps, pgrep in the tests
)

mkdir -p "$OUT/debs"
ROOT=$OUT/root.tmp
rm -rf "$ROOT"
t0=$SECONDS
debootstrap --variant=minbase --include="$(IFS=,; echo "${PACKAGES[*]}")" \
    --cache-dir="$(realpath "$OUT")/debs" "$SUITE" "$ROOT" "$MIRROR" >"$OUT/debootstrap.log" 2>&1 || {
    tail -30 "$OUT/debootstrap.log" >&2
    exit 1
}
echo sealtrail-nspawn >"$ROOT/etc/hostname"
# No getty on the container console, no clock or network units waiting on hardware.
for unit in console-getty.service getty@.service systemd-timesyncd.service \
    systemd-networkd-wait-online.service apt-daily.timer apt-daily-upgrade.timer; do
    ln -sf /dev/null "$ROOT/etc/systemd/system/$unit"
done
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/*
rm -rf "$OUT/root"
mv "$ROOT" "$OUT/root"
echo "rootfs: built in $((SECONDS - t0)) s"

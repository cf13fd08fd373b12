#!/usr/bin/env bash
# The VM image recipe: Debian 12 (bookworm) + its stock kernel + what the agent needs at run time.
# Usage: image.sh OUTDIR REQUIREMENTS
#   writes OUTDIR/rootfs.ext4, vmlinuz, initrd.img, kernel-release. REQUIREMENTS: pip
#   requirements (run.sh derives them from pyproject.toml) installed into /opt/sealtrail-venv.
#
# run.sh keys its cache on a hash of THIS file and of REQUIREMENTS: a change rebuilds the image.
# The system is Debian packages only; the Python dependencies come from PyPI. Pitfalls (DESIGN.md 7): the kernel .deb is unpacked with `dpkg-deb
# --fsys-tarfile | tar --keep-directory-symlink` (dpkg -x would replace the lib -> usr/lib link),
# depmod runs inside the chroot, and the initramfs must carry virtio + ext4 + 9p.
set -euo pipefail

OUT=${1:?usage: image.sh OUTDIR REQUIREMENTS}
REQUIREMENTS=$(realpath "${2:?usage: image.sh OUTDIR REQUIREMENTS}")
SUITE=bookworm
MIRROR=${SEALTRAIL_VM_MIRROR:-http://deb.debian.org/debian}
PACKAGES=(
    python3 python3-venv                 # Python; its packages go into a venv (below)
    libbpf1 bpftool                      # loader runtime (ctypes), test_doctor
    kmod initramfs-tools                 # modprobe, depmod, mkinitramfs
    coreutils                            # cat, touch... used by the tests
)
# Modules the initramfs loads to reach the root disk; 9p is loaded by /sbin/sealtrail-init.
INITRD_MODULES=(virtio_pci virtio_blk ext4 9p 9pnet_virtio)

ROOT=$OUT/root # copied into the ext4 image by mkfs.ext4 -d at the end
rm -rf "$ROOT"
mkdir -p "$ROOT" "$OUT/debs"

t0=$SECONDS
echo "image: debootstrap $SUITE (${PACKAGES[*]})"
debootstrap --variant=minbase --include="$(
    IFS=,
    echo "${PACKAGES[*]}"
)" --cache-dir="$(realpath "$OUT/debs")" "$SUITE" "$ROOT" "$MIRROR" >"$OUT/debootstrap.log" 2>&1 ||
    {
        tail -30 "$OUT/debootstrap.log" >&2
        exit 1
    }
echo "image: debootstrap done in $((SECONDS - t0)) s"

# ---- the stock kernel, unpacked (not installed: no postinst, no full-size initramfs) ----
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
chroot "$ROOT" apt-get update -qq
chroot "$ROOT" bash -c 'cd /tmp && apt-get download -qq linux-image-amd64 \
    $(apt-cache depends linux-image-amd64 | sed -n "s/^ *Depends: \(linux-image-[0-9].*\)/\1/p")'
for deb in "$ROOT"/tmp/linux-image-*.deb; do
    dpkg-deb --fsys-tarfile "$deb" | tar -x --keep-directory-symlink -C "$ROOT"
done
rm -f "$ROOT"/tmp/*.deb "$ROOT/etc/resolv.conf"
KVER=$(basename "$(ls -d "$ROOT"/usr/lib/modules/*/ | head -1)")
chroot "$ROOT" depmod -a "$KVER"
echo "image: kernel $KVER"

# ---- initramfs: only the modules needed to mount the root disk (and 9p) ----
printf '%s\n' "${INITRD_MODULES[@]}" >"$ROOT/etc/initramfs-tools/modules"
sed -i 's/^MODULES=.*/MODULES=list/; s/^COMPRESS=.*/COMPRESS=gzip/' \
    "$ROOT/etc/initramfs-tools/initramfs.conf"
chroot "$ROOT" mkinitramfs -o "/boot/initrd.img-$KVER" "$KVER" 2>"$OUT/mkinitramfs.log"

# ---- Python deps: a venv over Debian's python3 with the project's own dependencies (REQUIREMENTS:
# pyproject.toml [project].dependencies + the test runner, part of the cache key) as PyPI wheels
# for the guest (CPython 3.11, glibc 2.36). rfc8785 and a recent orjson are not in Debian; this
# keeps the guest in step with the host's .venv. The HOST's pip downloads (its index and CA
# settings apply); the chroot installs offline. The repo itself comes in by 9p (PYTHONPATH).
platforms=()
for tag in manylinux_2_36 manylinux_2_34 manylinux_2_28 manylinux_2_17 manylinux2014 \
    manylinux_2_12 manylinux2010 manylinux_2_5 manylinux1; do
    platforms+=(--platform "${tag}_x86_64")
done
"${PIP_PYTHON:-python3}" -m pip download -q --only-binary=:all: "${platforms[@]}" \
    --python-version 3.11 --implementation cp -d "$ROOT/tmp/wheels" -r "$REQUIREMENTS" \
    >"$OUT/pip.log" 2>&1 || {
    cat "$OUT/pip.log" >&2
    exit 1
}
cp "$REQUIREMENTS" "$ROOT/tmp/wheels/requirements.txt"
chroot "$ROOT" env -i PATH=/usr/bin:/bin sh -c 'python3 -m venv /opt/sealtrail-venv &&
    /opt/sealtrail-venv/bin/pip install -q --no-index --find-links /tmp/wheels \
        --disable-pip-version-check -r /tmp/wheels/requirements.txt' >>"$OUT/pip.log" 2>&1 || {
    cat "$OUT/pip.log" >&2
    exit 1
}
rm -rf "$ROOT/tmp/wheels"

# ---- the init: mount what the agent needs, then hand over to the repo's guest script ----
cat >"$ROOT/sbin/sealtrail-init" <<'EOF'
#!/bin/bash
# PID 1 in the sealtrail test VM (no systemd): mount the repo, run its guest script.
mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
modprobe 9pnet_virtio && modprobe 9p
mkdir -p /repo /out
opts=trans=virtio,version=9p2000.L,msize=262144
mount -t 9p -o "$opts,ro,cache=loose" repo /repo && mount -t 9p -o "$opts" out /out &&
    exec /bin/bash /repo/tests/vm/guest.sh
echo "sealtrail-init: cannot mount the 9p shares" >&2
echo o >/proc/sysrq-trigger
EOF
chmod 755 "$ROOT/sbin/sealtrail-init"
echo sealtrail-vm >"$ROOT/etc/hostname"
rm -f "$ROOT/etc/resolv.conf"

# ---- boot files out, the rest into an ext4 image (no loop device, no mount) ----
cp "$ROOT/boot/vmlinuz-$KVER" "$OUT/vmlinuz"
cp "$ROOT/boot/initrd.img-$KVER" "$OUT/initrd.img"
echo "$KVER" >"$OUT/kernel-release"
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/* "$ROOT/boot"/*
mkfs.ext4 -q -F -L sealtrail-vm -d "$ROOT" "$OUT/rootfs.ext4" 1G
rm -rf "$ROOT"
echo "image: built in $((SECONDS - t0)) s"

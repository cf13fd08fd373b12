#!/usr/bin/env bash
# make deb: build/deb/sealtrail_VERSION-1_amd64.deb with dpkg-deb over a staged tree.
#
# Not dh-python: Debian 12's python3-cryptography is too old for the project and it has no
# rfc8785 or orjson packages. The package carries its own venv at /opt/sealtrail, built with
# Debian's /usr/bin/python3 (3.11, what the target runs) at its final path /opt/sealtrail/venv:
# inside a private mount namespace an overlay over /opt catches what is written there, so the
# venv's shebangs, pyvenv.cfg and byte code name their final path and the build host's /opt is
# untouched. The agent's private interpreter (bin/python3-agent, with its own ELF loader) is not
# in the package: postinst copies the target's own, and a dpkg trigger renews the copies when
# python3.11 or libc6 changes them (a loader must match the libc it loads).
# The project goes in non-editable with its dependencies from the package index; compiled probes
# (agent/kernel/obj) and the native core (agent/native/lib) are package data of its wheel.
# Needs root (unshare -m, mount) and, for systemd-python, libsystemd-dev + pkg-config.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=$(realpath -m "${1:-$REPO/build/deb}")
PY=/usr/bin/python3   # Debian's, never a pyenv or venv python: the venv is built against it
PKG=sealtrail
PREFIX=/opt/sealtrail/venv
ARCH=amd64

log() { echo "deb: $*" >&2; }
die() { log "$*"; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (a private mount namespace for the venv's final path)"
"$PY" -c 'import venv, ensurepip' 2>/dev/null || die "$PY lacks venv: apt-get install python3-venv"
for obj in "$REPO"/probes/*.bpf.c; do
    o=$REPO/agent/kernel/obj/$(basename "${obj%.c}").o
    [ -f "$o" ] || die "$o missing: run make probes"
done
[ -f "$REPO/agent/kernel/obj/events-compat.bpf.o" ] || die "events-compat.bpf.o missing: run make probes"
[ -f "$REPO/agent/native/lib/libsealtrail.so" ] || die "native core missing: run make native"
# The package is for the distribution it is built on: its Python minor version, in the venv, the
# dependencies, the trigger and the lintian overrides (Debian 12: 3.11; Ubuntu 24.04: 3.12).
PYVER=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
PYNEXT=$("$PY" -c 'import sys; print("%d.%d" % (sys.version_info[0], sys.version_info[1] + 1))')
UPSTREAM=$("$PY" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
    "$REPO/pyproject.toml")
VERSION=$UPSTREAM-1

WORK=$OUT/work
STAGE=$WORK/stage
rm -rf "$WORK"
mkdir -p "$WORK/src" "$WORK/upper" "$WORK/ovl" "$STAGE/DEBIAN"

# ---- the project, copied: setuptools builds in the source tree, and ours has build/ in use ----
cp "$REPO/pyproject.toml" "$REPO/README.md" "$WORK/src/"
tar -C "$REPO" --exclude=__pycache__ -cf - agent | tar -C "$WORK/src" -xf -

# ---- the venv at its final path, inside a private mount namespace ----
log "venv $PREFIX ($("$PY" --version))"
unshare -m --propagation private bash -euo pipefail -c '
    mount -t overlay overlay -o "lowerdir=/opt,upperdir=$1/upper,workdir=$1/ovl" /opt
    "$2" -m venv "$3"
    "$3/bin/pip" install -q --disable-pip-version-check --no-cache-dir "$1/src"
    "$3/bin/pip" uninstall -q -y pip setuptools
    rm -f "$3"/bin/activate* "$3"/bin/Activate.ps1
    # Byte code now, unchecked: nothing is compiled (or left behind) at run time under /opt.
    find "$3" -name __pycache__ -prune -exec rm -rf {} +
    "$3/bin/python" -m compileall -q -j0 --invalidation-mode unchecked-hash "$3/lib"
' venv-build "$WORK" "$PY" "$PREFIX" >"$WORK/venv.log" 2>&1 || {
    tail -30 "$WORK/venv.log" >&2
    die "venv build failed (log: $WORK/venv.log)"
}
mkdir -p "$STAGE/opt"
mv "$WORK/upper/sealtrail" "$STAGE/opt/sealtrail"
SITE=$(echo "$STAGE$PREFIX"/lib/python3.*/site-packages)
for f in agent/native/lib/libsealtrail.so agent/kernel/obj/events.bpf.o \
    agent/kernel/obj/events-compat.bpf.o agent/kernel/obj/guard.bpf.o; do
    [ -f "$SITE/$f" ] || die "$f is not in the installed package (package data in pyproject.toml)"
done
# The source tree's path, recorded by pip, means nothing on the target.
rm -f "$SITE"/sealtrail-*.dist-info/direct_url.json
# As dh_strip and dh_fixperms would: shared objects stripped and not executable. Not the BPF
# objects: libbpf needs their BTF, and they are eBPF, not amd64 (lintian overrides say so).
find "$STAGE/opt" -name '*.so*' -type f -exec strip --strip-unneeded {} + -exec chmod 0644 {} +

# ---- the rest of the tree ----
install -d "$STAGE/usr/bin" "$STAGE/lib/systemd/system" "$STAGE/usr/lib/tmpfiles.d" \
    "$STAGE/usr/lib/sysusers.d" "$STAGE/etc/sealtrail/policies" "$STAGE/usr/share/doc/$PKG" \
    "$STAGE/usr/share/lintian/overrides"
ln -s "$PREFIX/bin/sealtrail" "$STAGE/usr/bin/sealtrail"
install -m 0644 "$REPO"/packaging/sealtrail-agent.service "$REPO"/packaging/sealtrail-collector.service \
    "$STAGE/lib/systemd/system/"
install -m 0644 "$REPO/packaging/sealtrail.tmpfiles" "$STAGE/usr/lib/tmpfiles.d/sealtrail.conf"
install -m 0644 "$REPO/packaging/sealtrail.sysusers" "$STAGE/usr/lib/sysusers.d/sealtrail.conf"
install -m 0644 "$REPO/packaging/agent.toml" "$STAGE/etc/sealtrail/agent.toml"
# The baseline: every example policy, in monitor mode (would_deny / would_kill recorded, nothing
# stopped). The operator opts in to enforce per file (mode = "enforce") and reloads.
for p in "$REPO"/policies/*.toml; do
    sed 's/^mode = "enforce"/mode = "monitor"  # the package ships monitor; "enforce" to enforce/' \
        "$p" >"$STAGE/etc/sealtrail/policies/$(basename "$p")"
    chmod 0644 "$STAGE/etc/sealtrail/policies/$(basename "$p")"
done
if grep -l '^mode = "enforce"' "$STAGE"/etc/sealtrail/policies/*.toml; then
    die "a shipped policy is not in monitor mode"
fi
for doc in README.md docs/*.md policies/README.md; do
    [ -f "$REPO/$doc" ] || continue
    name=$(basename "$doc"); [ "$doc" = policies/README.md ] && name=policies.md
    install -m 0644 "$REPO/$doc" "$STAGE/usr/share/doc/$PKG/$name"
done
install -m 0644 "$REPO/packaging/debian/copyright" "$STAGE/usr/share/doc/$PKG/copyright"
sed "s/@VERSION@/$VERSION/" "$REPO/packaging/debian/changelog" | gzip -9n \
    >"$STAGE/usr/share/doc/$PKG/changelog.Debian.gz"
sed "s/@PYVER@/$PYVER/g" "$REPO/packaging/debian/lintian-overrides" \
    >"$STAGE/usr/share/lintian/overrides/$PKG"

# ---- control files ----
(cd "$STAGE" && find etc -type f | sed 's|^|/|' | sort) >"$STAGE/DEBIAN/conffiles"
for s in postinst prerm postrm; do
    install -m 0755 "$REPO/packaging/debian/$s" "$STAGE/DEBIAN/$s"
done
sed "s/@PYVER@/$PYVER/g" "$REPO/packaging/debian/triggers" >"$STAGE/DEBIAN/triggers"
SIZE=$(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)
sed -e "s/@VERSION@/$VERSION/" -e "s/@ARCH@/$ARCH/" -e "s/@SIZE@/$SIZE/" \
    -e "s/@PYVER@/$PYVER/g" -e "s/@PYNEXT@/$PYNEXT/g" \
    "$REPO/packaging/debian/control" >"$STAGE/DEBIAN/control"
(cd "$STAGE" && find . -path ./DEBIAN -prune -o -type f -print0 | sed -z 's|^\./||' | sort -z |
    xargs -0 md5sum) >"$STAGE/DEBIAN/md5sums"
chmod 0644 "$STAGE/DEBIAN/md5sums" "$STAGE/DEBIAN/conffiles" "$STAGE/DEBIAN/control" \
    "$STAGE/DEBIAN/triggers"

DEB=$OUT/${PKG}_${VERSION}_${ARCH}.deb
rm -f "$OUT"/"${PKG}"_*.deb
dpkg-deb --root-owner-group -Zxz --build "$STAGE" "$DEB" >/dev/null
log "$DEB ($(du -h "$DEB" | cut -f1), installed $((SIZE / 1024)) MB)"

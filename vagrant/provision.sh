#!/usr/bin/env bash
# Provision a Vagrant box (vagrant/Vagrantfile) from the repository shared at /sealtrail, as root.
#   provision.sh lsm       turn BPF-LSM on (kernel command line `lsm=...,bpf`) where the running
#                          kernel lacks it; the Vagrantfile reboots the box after this step
#   provision.sh test      build, then the kernel suite on this kernel (BPF-LSM on), then the
#                          .deb installed by packaging/install.sh, the very procedure the
#                          systemd-nspawn test (tests/packaging) runs, and checked under systemd
set -euo pipefail
cd /sealtrail

lsm() {
    current=$(cat /sys/kernel/security/lsm)
    case ",$current," in
    *,bpf,*)
        echo "provision: BPF-LSM already on ($current)"
        return
        ;;
    esac
    # Debian 12's kernel lists bpf by default; Ubuntu 24.04's does not (CONFIG_LSM lacks it).
    echo "GRUB_CMDLINE_LINUX=\"\$GRUB_CMDLINE_LINUX lsm=$current,bpf\"" \
        >/etc/default/grub.d/99-sealtrail-bpf-lsm.cfg
    update-grub
    echo "provision: lsm=$current,bpf set; the box reboots"
}

test_box() {
    case ",$(cat /sys/kernel/security/lsm)," in
    *,bpf,*) ;;
    *) echo "provision: BPF-LSM is off after the reboot" >&2; exit 1 ;;
    esac
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq make python3-venv patchelf
    make bootstrap
    # The suite first: its agents pin in directories of their own, but a guard pinned in the
    # machine's /sys/fs/bpf/sealtrail (the package's agent) blocks them.
    CI=true .venv/bin/pytest -q -m kernel tests/kernel
    make deb
    sh packaging/install.sh build/deb/sealtrail_*_amd64.deb
    sealtrail doctor
    sealtrail status
    systemd-analyze security sealtrail-agent.service | tail -1
}

case ${1:-} in
lsm) lsm ;;
test) test_box ;;
*) echo "usage: provision.sh lsm|test" >&2; exit 2 ;;
esac

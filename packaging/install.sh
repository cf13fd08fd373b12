#!/bin/sh
# Install a sealtrail .deb and wait until the agent is up. The one install procedure of both the
# systemd-nspawn test (tests/packaging, inside the container) and the Vagrant boxes
# (vagrant/provision.sh), so what the test proves is what a box gets.
# Usage: install.sh DEB [SECONDS]   (default: wait 60 s for the agent to be active)
set -eu

DEB=$(realpath "${1:?usage: install.sh DEB [SECONDS]}")
WAIT=${2:-60}

# apt, not dpkg -i: the dependencies resolve (from the mirror, or from what is installed).
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$DEB"

# postinst enabled and started the agent. Type=notify: "active" means READY=1 came, that is the
# policies are enforced and the journal is open.
i=0
while :; do
    state=$(systemctl is-active sealtrail-agent.service || true)
    case $state in
    active) break ;;
    failed)
        systemctl --no-pager status sealtrail-agent.service >&2 || true
        echo "install.sh: sealtrail-agent.service failed" >&2
        exit 1
        ;;
    esac
    i=$((i + 1))
    if [ "$i" -gt "$((WAIT * 10))" ]; then
        echo "install.sh: sealtrail-agent.service not active after ${WAIT} s ($state)" >&2
        exit 1
    fi
    sleep 0.1
done
echo "install.sh: sealtrail-agent active: $(systemctl show -p StatusText --value sealtrail-agent.service)"

#!/bin/bash
# Runs INSIDE the test VM as PID 1 (exec'd by the image's /sbin/sealtrail-init once the 9p shares
# are mounted: /repo read-only, /out read-write). Mounts what the agent needs, runs the command
# that run.sh wrote to /out/cmd with its output on the second serial port (streamed by run.sh),
# writes the exit code to /out/exit-code and powers off. Lives in the repo, not in the image, so
# changing it does not rebuild the image.
set -u
exec >/dev/ttyS1 2>&1

mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t tracefs tracefs /sys/kernel/tracing
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t securityfs securityfs /sys/kernel/security
mkdir -p /dev/pts /dev/shm && mount -t devpts devpts /dev/pts && mount -t tmpfs tmpfs /dev/shm
# loopback up (the image has no iproute2)
python3 -c '
import fcntl, socket, struct
s = socket.socket()
ifr = struct.pack("16sh", b"lo", 0)
flags = struct.unpack("16sh", fcntl.ioctl(s, 0x8913, ifr))[1]  # SIOCGIFFLAGS
fcntl.ioctl(s, 0x8914, struct.pack("16sh", b"lo", flags | 1))  # SIOCSIFFLAGS |= IFF_UP
'
hostname sealtrail-vm

echo "vm: kernel $(uname -r), up $(cut -d' ' -f1 /proc/uptime) s, lsm=$(cat /sys/kernel/security/lsm)"

export HOME=/root VIRTUAL_ENV=/opt/sealtrail-venv PATH=/opt/sealtrail-venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# bytecode goes to the guest (the repo is read-only), shared by every python the suite starts
export PYTHONPATH=/repo PYTHONPYCACHEPREFIX=/tmp/pycache PYTHONUNBUFFERED=1
export CI=1 SEALTRAIL_VM=1 SEALTRAIL_EXPECT_LSM=1
cd /repo
# /out/cmd: one shell line from run.sh (default: pytest over the VM suites)
bash -c "$(cat /out/cmd)"
rc=$?
echo "$rc" >/out/exit-code.tmp && mv /out/exit-code.tmp /out/exit-code
sync
echo "vm: exit code $rc after $(cut -d' ' -f1 /proc/uptime) s"
echo o >/proc/sysrq-trigger
sleep 10

#!/bin/sh
# /init of the LIO target VM (busybox, in the initramfs built by tests/e2e/lio_vm/__init__.py).
#
# Loads the kernel modules listed in /modules.list (dependency order), mounts configfs, brings up
# the user-mode network, mounts the host's root read-only over 9p (tag "hostroot") and the test's
# work directory read-write at the same path (tag "ggnetwork"), then runs the agent — the project's
# own LioBackend — in a chroot into the host root with the test's Python interpreter.
# Kernel command line: ggnet.python=PATH ggnet.agent=PATH ggnet.work=DIR (no spaces in them).
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
# what udev makes on a full system: ggnet hands qemu-img its pinned input as /dev/fd/N
ln -s /proc/self/fd /dev/fd
log() { echo "LIOVM: $*"; }
die() { log "FAILED: $*"; poweroff -f; }

for kv in $(cat /proc/cmdline); do
  case "$kv" in
    ggnet.python=*) python=${kv#*=} ;;
    ggnet.agent=*) agent=${kv#*=} ;;
    ggnet.work=*) work=${kv#*=} ;;
  esac
done

# a failure is only logged: some are CPU-specific variants (crct10dif-pclmul under TCG) with a
# generic fallback; a module that matters shows up as a failure below or in the agent's health
while read -r module; do
  insmod "/modules/$module" 2>/dev/null || log "insmod $module failed"
done < /modules.list
mount -t configfs none /sys/kernel/config || die "mount configfs"

ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2

mkdir -p /host
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose hostroot /host || die "9p mount of the host root"
for d in proc sys dev; do mount --bind "/$d" "/host/$d" || die "bind /$d"; done
mount -t configfs none /host/sys/kernel/config || die "configfs in the chroot"
mount -t tmpfs run /host/run
mount -t 9p -o trans=virtio,version=9p2000.L,rw ggnetwork "/host$work" || die "9p mount of the work directory"

# rtslib-fb insists on dbroot=/etc/target; the kernel checks the directory exists for the writer,
# and the host's /etc is read-only here, so set it from the initramfs side
mkdir -p /etc/target
echo /etc/target > /sys/kernel/config/target/dbroot || die "dbroot"

log "starting agent"
chroot /host /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root PYTHONDONTWRITEBYTECODE=1 \
  PYTHONUNBUFFERED=1 "$python" "$agent" "$work/agent.log" 2>&1
die "agent exited rc=$?"

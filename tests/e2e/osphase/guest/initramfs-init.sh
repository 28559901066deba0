#!/bin/sh
# /init of the OS-phase initramfs (busybox, open-iscsi's iscsistart, Debian's kernel modules).
# What a diskless OS does after the firmware's iPXE booted it: read the iBFT iPXE published, bring
# the NIC up from it, log in AGAIN to the target with the iBFT's values (initiator IQN, target,
# CHAP), mount the root file system from the iSCSI disk and switch_root into it.
# Every line it prints starts with OSPHASE- and ends with the guest's uptime; failures are
# OSPHASE-FAIL-<what>, then the machine powers off (QEMU runs with -no-reboot and exits).
export PATH=/sbin:/bin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /run /run/lock /var /etc/iscsi /newroot /tmp
ln -s /run/lock /var/lock
say() { echo "OSPHASE-$* [t=$(cut -d' ' -f1 /proc/uptime)]" > /dev/console; }
fail() { say "FAIL-$*"; sync; sleep 1; poweroff -f; }
grep -q ggnet.shell /proc/cmdline && exec sh </dev/console >/dev/console 2>&1
say INIT-START
# crc32c_generic by name: crc32c-intel, which plain crc32c picks, fails on QEMU's TCG CPU
for m in e1000 iscsi_ibft sd_mod iscsi_tcp crc32c_generic ext4; do
  modprobe $m 2>/dev/null || say "MODPROBE-FAILED $m"
done

I=/sys/firmware/ibft
[ -d $I/target0 ] || fail "NO-IBFT (no iBFT table: did iPXE run sanboot with --no-describe?)"
v() { cat $I/$1 2>/dev/null; }
# the CHAP secret itself is never printed: its length, and the start of its sha256 (which boot's it is)
secret() { v target0/chap-secret | tr -d '\n'; }
say "IBFT initiator=$(v initiator/initiator-name) target=$(v target0/target-name)" \
    "addr=$(v target0/ip-addr):$(v target0/port) lun=$(v target0/lun) chap=$(v target0/chap-name)" \
    "secret_len=$(secret | wc -c) secret_sha256=$(secret | sha256sum | cut -c1-16)" \
    "nic=$(v ethernet0/mac) ip=$(v ethernet0/ip-addr)"

# the network from the iBFT (what initramfs-tools does with ISCSI_AUTO=true)
iscsistart -N > /tmp/net.log 2>&1 || { cat /tmp/net.log > /dev/console; fail NET; }
ip link set lo up
GW=$(v ethernet0/gateway)
[ -n "$GW" ] && [ "$GW" != 0.0.0.0 ] && ip route add default via "$GW" 2>/dev/null
say "NET-UP $(ip -o -4 addr show | awk '$2 != "lo" {print $2, $4}')"

say LOGIN-START
iscsistart -b > /tmp/login.log 2>&1
rc=$?
sed 's/^/  iscsistart: /' /tmp/login.log > /dev/console
[ $rc = 0 ] || fail "LOGIN rc=$rc"
say LOGIN-OK

# Every LUN of the target reaches the OS through this one login. The kernel adds them one after
# the other; wait until the list of disks (LUN=device) stops changing and each has its device.
disks() {
  for d in /sys/class/iscsi_session/session*/device/target*/*:*:*:*; do
    [ "$(cat $d/type 2>/dev/null)" = 0 ] && echo "lun${d##*:}=$(ls $d/block 2>/dev/null)"
  done
}
prev=
for i in $(seq 100); do
  now=$(disks | tr '\n' ' ')
  case "$now" in "" | *"= "*) ;; *) [ "$now" = "$prev" ] && break ;; esac
  prev=$now
  sleep 0.2
done
say "DISKS $now"

ROOT=
for i in $(seq 50); do
  ROOT=$(findfs LABEL=ggnet-root 2>/dev/null) && [ -b "$ROOT" ] && break
  ROOT=
  sleep 0.1
done
[ -n "$ROOT" ] || fail "NO-ROOT (no file system labelled ggnet-root on: $(ls /sys/block | tr '\n' ' '))"
mount -t ext4 -o rw "$ROOT" /newroot || fail "ROOT-MOUNT $ROOT"
say "ROOT-MOUNTED dev=$ROOT $(readlink -f /sys/class/block/${ROOT#/dev/} | grep -o 'session[0-9]*' | head -1)"
for d in dev proc sys; do mount --move /$d /newroot/$d; done
exec switch_root /newroot /sbin/init

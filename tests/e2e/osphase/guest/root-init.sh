#!/bin/sh
# /sbin/init of the root file system on the iSCSI disk (PID 1 after switch_root): the operating
# system is running from its network disk. It reports what earlier boots left on the disk (a fresh
# writeback has nothing, a kept one has their lines), adds a line naming this boot, does the same on
# the game disk (a second LUN labelled ggnet-game) when there is one, flushes and powers off.
export PATH=/sbin:/bin
say() { echo "OSPHASE-$* [t=$(cut -d' ' -f1 /proc/uptime)]" > /dev/console; }
mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sys /sys
mountpoint -q /dev || mount -t devtmpfs dev /dev
mount -t tmpfs tmpfs /run 2>/dev/null
ROOTDEV=$(awk '$2 == "/" {print $1}' /proc/mounts | tail -1)
say "OS-REACHED root=$ROOTDEV $(cat /etc/ggnet-osphase-id)"
BOOT_ID=$(cat /proc/sys/kernel/random/boot_id)
INITIATOR=$(cat /sys/firmware/ibft/initiator/initiator-name 2>/dev/null)

# visit NAME DIR: report and extend DIR/ggnet-boots.txt (one line per boot that got this far)
visit() {
  log=$2/ggnet-boots.txt
  if [ -s $log ]; then
    say "$1-PREV kept boots=$(wc -l < $log) last=$(tail -1 $log | cut -d' ' -f1 | cut -d= -f2)"
  else
    say "$1-PREV fresh"
  fi
  echo "boot_id=$BOOT_ID initiator=$INITIATOR" >> $log
  sync
  grep -q "boot_id=$BOOT_ID" $log && say "$1-WRITE-OK boot_id=$BOOT_ID" || say "FAIL-$1-WRITE"
}

visit ROOT /
GAME=$(findfs LABEL=ggnet-game 2>/dev/null)
if [ -z "$GAME" ]; then
  say GAME-NONE
elif mkdir -p /run/game && mount -t ext4 -o rw "$GAME" /run/game; then
  say "GAME-DISK dev=$GAME content=$(cat /run/game/ggnet-game.txt 2>/dev/null)"
  visit GAME /run/game
  umount /run/game
else
  say "FAIL-GAME-MOUNT $GAME"
fi
mount -o remount,ro /
sync
say DONE
poweroff -f

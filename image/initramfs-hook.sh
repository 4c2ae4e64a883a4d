#!/bin/sh
# initramfs-tools hook (pid1 mode): ship the udhcpc event script, so the initramfs can take a DHCP lease
# before stackinit starts (see scripts/init-bottom/stackinit-dhcp). busybox (udhcpc, ip) is added by the
# busybox hook.
PREREQ=""
prereqs() { echo "$PREREQ"; }
case "$1" in prereqs) prereqs; exit 0 ;; esac
. /usr/share/initramfs-tools/hook-functions
mkdir -p "$DESTDIR/lib/stackinit"
cp /usr/local/lib/stackinit/udhcpc.script "$DESTDIR/lib/stackinit/udhcpc.script"
chmod 0755 "$DESTDIR/lib/stackinit/udhcpc.script"

#!/bin/sh
# initramfs init-bottom script (pid1 mode): take one DHCP lease before stackinit starts. stackinit asks
# IMDS for the instance's names once, as it starts, and its DHCP service starts only after that; with the
# lease already in place the facts are there from the first request. The kernel keeps the address across
# switch_root, and /run (with resolv.conf) moves into the real root. `stackinit.dhcp=off` on the kernel
# command line skips it.
PREREQ=""
prereqs() { echo "$PREREQ"; }
case "$1" in prereqs) prereqs; exit 0 ;; esac
case " $(cat /proc/cmdline) " in *" stackinit.dhcp=off "*) exit 0 ;; esac
iface=""
for dir in /sys/class/net/*; do
    name=${dir##*/}
    [ "$name" = lo ] && continue
    [ -e "$dir/device" ] || continue
    iface=$name
    break
done
[ -n "$iface" ] || { echo "stackinit-dhcp: no network interface" >&2; exit 0; }
ip link set dev "$iface" up
# -q: exit once bound, leaving the address in place; -n: give up after ~6 s rather than hang the boot.
udhcpc -n -q -t 6 -T 1 -i "$iface" -s /lib/stackinit/udhcpc.script || echo "stackinit-dhcp: no lease on $iface" >&2
exit 0

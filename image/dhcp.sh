#!/bin/sh
# The DHCP client, as a supervised service (pid1 mode): busybox udhcpc in the foreground on the first
# network interface. Names differ per platform (ens3/ens4 under QEMU, ens5 on EC2 Nitro, eth0 on Xen), so
# take the first one that is a real device rather than a fixed name. DHCP_INTERFACE overrides.
iface=${DHCP_INTERFACE:-}
if [ -z "$iface" ]; then
    for dir in /sys/class/net/*; do
        name=${dir##*/}
        [ "$name" = lo ] && continue
        [ -e "$dir/device" ] || continue
        iface=$name
        break
    done
fi
if [ -z "$iface" ]; then
    echo "dhcp: no network interface (is the NIC's module in the initramfs?)" >&2
    exit 1
fi
echo "$iface" >/run/dhcp.iface
echo "dhcp: using $iface"
# -f foreground (supervised); no -R: stopping must not release the lease while the proxy drains.
exec busybox udhcpc -f -i "$iface" -s /usr/local/lib/stackinit/udhcpc.script -x hostname:"$(hostname)"

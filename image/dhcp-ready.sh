#!/bin/sh
# Readiness of the dhcp service: the interface it manages has a global IPv4 address.
iface=$(cat /run/dhcp.iface 2>/dev/null) || exit 1
ip -4 -o addr show dev "$iface" scope global 2>/dev/null | grep -q inet

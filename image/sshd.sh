#!/bin/sh
# sshd as a supervised service (pid1 mode): in the foreground (-D), logging to stderr (-e, the service's log
# in /logs), with its privilege-separation directory on /run (a tmpfs, so made at every start). Its host keys
# and the authorized key come from the firstboot job (/var/lib/stackinit/ssh, see sshd_config.d/).
set -eu
mkdir -p /run/sshd
chmod 0755 /run/sshd
exec /usr/sbin/sshd -D -e

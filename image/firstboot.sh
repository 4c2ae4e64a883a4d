#!/bin/sh
# The first boot of an instance (pid1 mode): a oneshot service of stackinit, run at every boot, that does its
# work once per instance id, as cloud-init's per-instance modules and systemd-firstboot do. Every clone of
# the image starts with no host keys, no machine id and no SSH key (nothing per machine is baked in); the
# first boot of each instance makes them, and grows the root to the volume it was launched with. A reboot
# of the same instance finds its id already recorded and changes nothing, so its host keys stay the same.
# At every boot it also names the machine after the instance (the kernel's hostname lasts one boot).
#
# The instance id is stackinit's instance fact (STACKINIT_INSTANCE_ID, from IMDS). Without one (IMDS down),
# a machine that was set up before keeps what it has; one that never was is set up as "unknown", and again
# once an id is known.
#
# State, all in $STATE (/var/lib/stackinit; on a read-only root the image mounts a tmpfs there, so the state
# then lasts until power-off):
#   instance-id                   the instance the state was made for (written last: an interrupted first
#                                 boot runs again)
#   machine-id                    /etc/machine-id links here
#   ssh/ssh_host_*_key            sshd's host keys (sshd_config.d/10-stackinit.conf)
#   ssh/authorized_keys/USER      IMDS public-keys/0/openssh-key, for $STACKINIT_SSH_USER
#
# Environment: STACKINIT_INSTANCE_ID, STACKINIT_PRIVATE_HOSTNAME, STACKINIT_SSH_USER (admin),
# STACKINIT_IMDS_ENDPOINT (for imds-get), STACKINIT_STATE_DIR (/var/lib/stackinit).
set -eu

STATE=${STACKINIT_STATE_DIR:-/var/lib/stackinit}
SSH_USER=${STACKINIT_SSH_USER:-admin}
LIB=/usr/local/lib/stackinit
# ed25519 and ECDSA: what every current client takes. RSA key generation takes seconds on a small instance
# and longer under emulation, for clients that are a decade old.
HOST_KEY_TYPES="ed25519 ecdsa"

say() { echo "firstboot: $*"; }

# The root file system's block device (e.g. nvme0n1p1), its disk (nvme0n1) and partition number (1), from
# sysfs: nothing here depends on device names or on udev.
root_partition() {
    sys=$(readlink -f "/sys/dev/block/$(mountpoint -d /)")
    [ -e "$sys/partition" ] || return 1
    ROOT_DEV=${sys##*/}
    ROOT_PART=$(cat "$sys/partition")
    ROOT_DISK=$(basename "$(dirname "$sys")")
}

root_is_read_only() {
    awk '$2 == "/" { split($4, o, ","); ro = (o[1] == "ro") } END { exit !ro }' /proc/self/mounts
}

# An instance launched with a bigger volume than the image: grow the root partition to the end of the disk
# (growpart: exit 1 means there was nothing to grow), then the file system, online.
grow_root() {
    if ! root_partition; then
        say "the root is not on a partition: not growing it"
        return 0
    fi
    if root_is_read_only; then
        say "the root is read-only: not growing /dev/$ROOT_DEV"
        return 0
    fi
    rc=0
    out=$(growpart "/dev/$ROOT_DISK" "$ROOT_PART" 2>&1) || rc=$?
    case $rc in
        0)
            say "grew the root partition: $out"
            if resize2fs "/dev/$ROOT_DEV" >/dev/null 2>&1; then
                say "resized the root file system on /dev/$ROOT_DEV to $(df -h / | awk 'NR == 2 { print $2 }')"
            else
                say "resize2fs /dev/$ROOT_DEV failed: $(resize2fs "/dev/$ROOT_DEV" 2>&1 | tail -n 1)"
            fi
            ;;
        1) say "the root partition already fills /dev/$ROOT_DISK" ;;
        *) say "growpart /dev/$ROOT_DISK $ROOT_PART failed ($rc): $out" ;;
    esac
}

new_machine_id() {
    tr -d '-' </proc/sys/kernel/random/uuid >"$STATE/machine-id.new"
    mv -f "$STATE/machine-id.new" "$STATE/machine-id"
    say "machine id $(cat "$STATE/machine-id")"
}

# Host keys and the authorized key, made in ssh.new and swapped in whole.
new_ssh_state() {
    new=$STATE/ssh.new
    rm -rf "$new" "$STATE/ssh.old"
    mkdir -p "$new/authorized_keys"
    for type in $HOST_KEY_TYPES; do
        ssh-keygen -q -t "$type" -N '' -C "host key of $1" -f "$new/ssh_host_${type}_key"
        say "host key $(ssh-keygen -l -f "$new/ssh_host_${type}_key.pub")"
    done
    # No instance id: stackinit found no IMDS at boot, so do not wait for it again here.
    rc=0
    key=""
    if [ "$1" != unknown ]; then key=$("$LIB/imds-get" public-keys/0/openssh-key) || rc=$?; fi
    if [ "$rc" -eq 0 ] && [ -n "$key" ]; then
        printf '%s\n' "$key" >"$new/authorized_keys/$SSH_USER"
        chmod 0644 "$new/authorized_keys/$SSH_USER"
        say "authorized key for $SSH_USER: $(printf '%s\n' "$key" | ssh-keygen -l -f - 2>/dev/null || echo '(unreadable)')"
    else
        say "no SSH key from IMDS (public-keys/0/openssh-key): nobody can log in over SSH"
    fi
    # Host keys a builder left in /etc/ssh (an amazon-ebs AMI) are not used, but are the builder's: delete
    # them, as cloud-init does (on a read-only root they stay, unused).
    rm -f /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub 2>/dev/null || true
    if [ -d "$STATE/ssh" ]; then mv "$STATE/ssh" "$STATE/ssh.old"; fi
    mv "$new" "$STATE/ssh"
    rm -rf "$STATE/ssh.old"
}

# ip-10-0-2-15.ec2.internal -> ip-10-0-2-15, as cloud-init names EC2 instances: what shells, the login
# prompt and logs show. Nothing to do without IMDS (the kernel's "(none)" stays).
name_machine() {
    name=${STACKINIT_PRIVATE_HOSTNAME:-}
    name=${name%%.*}
    [ -n "$name" ] || return 0
    [ "$(hostname)" = "$name" ] || hostname "$name" || say "could not set the hostname to $name"
}

main() {
    name_machine
    iid=${STACKINIT_INSTANCE_ID:-}
    done_for=$(cat "$STATE/instance-id" 2>/dev/null || true)
    if [ -n "$done_for" ] && { [ "$done_for" = "$iid" ] || [ -z "$iid" ]; }; then
        say "instance $done_for was set up at its first boot ($(cat "$STATE/first-boot" 2>/dev/null || echo '?')): nothing to do"
        return 0
    fi
    iid=${iid:-unknown}
    if ! mkdir -p "$STATE" 2>/dev/null || [ ! -w "$STATE" ]; then
        say "cannot write $STATE (a read-only root needs a volume or a tmpfs there): no host keys"
        return 1
    fi
    say "first boot of instance $iid${done_for:+ (the state was made for $done_for)}"
    new_machine_id
    new_ssh_state "$iid"
    grow_root
    date -u +%Y-%m-%dT%H:%M:%SZ >"$STATE/first-boot"
    printf '%s\n' "$iid" >"$STATE/instance-id.new"
    mv -f "$STATE/instance-id.new" "$STATE/instance-id"
    sync
    say "instance $iid is set up"
}

main "$@"

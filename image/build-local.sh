#!/usr/bin/env bash
# Build the image locally and offline (once cached): the `null.local` source of packer/stackinit.pkr.hcl runs
# this. It debootstraps a minimal Debian bookworm root (cached under $IMAGE_CACHE_DIR, keyed by everything that
# goes into it), runs image/install.sh in a chroot of a copy, and writes to $IMAGE_OUTPUT_DIR:
#   vmlinuz, initrd.img   the Debian cloud kernel and the initramfs install.sh rebuilt (virtio, ena, nvme,
#                         button, evdev)
#   root.ext4             the root file system (mkfs.ext4 -d), to boot as a raw virtio disk
#   cmdline               kernel command line for the mode (QEMU -append): root=/dev/vda ... init=...
#   image.env             mode, sizes and build times, for scripts
#
# Environment (set by the Packer template; defaults for running it by hand from the repo root):
#   STACKINIT_BINARY (required)   STACKINIT_BOOT_MODE=pid1|systemd|seed   STACKINIT_SRC=.
#   STACKINIT_APP_DIR, STACKINIT_SYSTEMD_DIR: take app/ or systemd/ from elsewhere (default: $STACKINIT_SRC/...)
#   STACKINIT_IMDS_ENDPOINT=http://10.0.2.100:80 (where the tests' guestfwd puts a fake IMDS; "" for none)
#   IMAGE_OUTPUT_DIR=.cache/image/out   IMAGE_CACHE_DIR=.cache/image   IMAGE_MIRROR (default: this host's apt mirror)
#   STACKINIT_STATUS_AGENT=0 (1: a `stackinit status` agent on /dev/ttyS1, for the tests)
#   IMAGE_SIZE (e.g. 2G; default: the tree plus headroom)   IMAGE_SUITE=bookworm
set -euo pipefail
START=$SECONDS

MODE=${STACKINIT_BOOT_MODE:-pid1}
SRC=${STACKINIT_SRC:-.}
BINARY=${STACKINIT_BINARY:-}
OUT=${IMAGE_OUTPUT_DIR:-.cache/image/out}
CACHE=${IMAGE_CACHE_DIR:-.cache/image}
MIRROR=${IMAGE_MIRROR:-}
SIZE=${IMAGE_SIZE:-}
SUITE=${IMAGE_SUITE:-bookworm}
IMDS_ENDPOINT=${STACKINIT_IMDS_ENDPOINT-http://10.0.2.100:80}
STATUS_AGENT=${STACKINIT_STATUS_AGENT:-0}
[ "$STATUS_AGENT" = 1 ] || STATUS_AGENT=""

say() { printf 'build-local: [%4ds] %s\n' $((SECONDS - START)) "$*"; }
die() { printf 'build-local: error: %s\n' "$*" >&2; exit 1; }

case "$MODE" in pid1|systemd|seed) ;; *) die "STACKINIT_BOOT_MODE must be pid1, systemd or seed" ;; esac
[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, chroot, mounts)"
[ -n "$BINARY" ] || die "STACKINIT_BINARY is required (the stackinit binary to bake in)"
for tool in debootstrap mkfs.ext4 chroot mount tar sha256sum; do
    command -v "$tool" >/dev/null || die "missing tool: $tool (apt-get install debootstrap e2fsprogs)"
done
mkdir -p "$OUT" "$CACHE"
OUT=$(cd "$OUT" && pwd)
CACHE=$(cd "$CACHE" && pwd)

# ---- mirror: the one this host's apt uses, read now (not baked in) ----------------------------------------
host_mirror() {
    local uri
    # deb822 sources first (Debian 12 default), then one-line sources.list entries.
    uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1 || true)
    if [ -z "$uri" ]; then
        uri=$(grep -hE '^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?(https?|file)://' /etc/apt/sources.list \
            /etc/apt/sources.list.d/*.list 2>/dev/null | grep -v security | head -n1 |
            sed -E 's/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?//' | awk '{print $1}' || true)
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}
[ -n "$MIRROR" ] || MIRROR=$(host_mirror)

# ---- the base tree, cached by its inputs ----------------------------------------------------------------
# Everything install.sh would otherwise apt-get goes in here, so a cached build needs no apt network at all.
packages=(linux-image-cloud-amd64 initramfs-tools busybox iproute2 python3 python3-venv ca-certificates kmod)
case "$MODE" in
    # dbus: logind needs it, and logind is what powers off on the ACPI power button under systemd.
    systemd) packages+=(systemd-sysv dbus) ;;
    seed) packages+=(systemd-sysv dbus nginx-light supervisor) ;;
esac
RECIPE=2 # bump when the debootstrap recipe below changes
key_input="recipe=$RECIPE suite=$SUITE arch=amd64 mirror=$MIRROR variant=minbase packages=${packages[*]} debootstrap=$(dpkg-query -W -f='${Version}' debootstrap 2>/dev/null || echo unknown)"
KEY=$(printf '%s' "$key_input" | sha256sum | cut -c1-16)
BASE=$CACHE/base-$KEY
if [ -d "$BASE/root" ]; then
    say "base tree: cached ($BASE)"
else
    say "base tree: debootstrap $SUITE from $MIRROR (cold, a few minutes)"
    tmp=$CACHE/.base-$KEY.$$
    rm -rf "$tmp"
    mkdir -p "$tmp"
    t0=$SECONDS
    if ! debootstrap --variant=minbase --include="$(IFS=,; echo "${packages[*]}")" "$SUITE" "$tmp/root" "$MIRROR" \
        >"$tmp/debootstrap.log" 2>&1; then
        tail -n 20 "$tmp/debootstrap.log" >&2
        die "debootstrap failed (log: $tmp/debootstrap.log)"
    fi
    chroot "$tmp/root" apt-get clean
    echo "$key_input" >"$tmp/inputs"
    say "base tree: debootstrap took $((SECONDS - t0)) s"
    mv "$tmp" "$BASE"
fi

# ---- a working copy, mounts, install.sh in the chroot ---------------------------------------------------
WORK=$OUT/work
ROOT=$WORK/root
mounted=()   # proc, sys, dev, wheels inside the chroot
overlay=""   # the image tree's overlay mount, if any
unmount_inner() {
    local i
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
        umount -l "${mounted[$i]}" 2>/dev/null || true
    done
    mounted=()
}
cleanup() {
    unmount_inner
    if [ -n "$overlay" ]; then umount -l "$overlay" 2>/dev/null || true; overlay=""; fi
    if mountpoint -q "$WORK/rw" 2>/dev/null; then umount -l "$WORK/rw" 2>/dev/null || true; fi
}
trap cleanup EXIT
safe_rm_work() {
    # Never rm -rf through a mount (a bound /dev would be emptied).
    if findmnt -rn -o TARGET | grep -q "^$WORK/"; then
        die "something is still mounted under $WORK; not removing it"
    fi
    rm -rf "$WORK"
}
safe_rm_work
mkdir -p "$WORK/rw" "$ROOT"
# The image's tree: an overlay over the cached base with its writable layer in a tmpfs, so nothing is copied
# and nothing is left to delete (removing ~10k files of a venv from disk took longer than the build). Where
# overlayfs or tmpfs is not available, a plain copy.
if mount -t tmpfs -o size=4g,mode=0755 tmpfs "$WORK/rw" 2>/dev/null && mkdir -p "$WORK/rw/upper" "$WORK/rw/ovl" &&
    mount -t overlay overlay -o "lowerdir=$BASE/root,upperdir=$WORK/rw/upper,workdir=$WORK/rw/ovl" "$ROOT" 2>/dev/null; then
    overlay=$ROOT
    say "image tree: overlay over the base"
else
    umount "$WORK/rw" 2>/dev/null || true
    t0=$SECONDS
    cp -a "$BASE/root/." "$ROOT"
    say "image tree: copied the base in $((SECONDS - t0)) s (no overlayfs)"
fi

STAGE=$ROOT/tmp/stackinit-src
STACKINIT_BINARY=$BINARY STACKINIT_SRC=$SRC STAGE=$STAGE bash "$SRC/image/stage.sh" >/dev/null

mount_in() { # mount_in ARGS... TARGET
    local target=${*: -1}
    mkdir -p "$target"
    mount "$@"
    mounted+=("$target")
}
mount_in -t proc proc "$ROOT/proc"
mount_in -t sysfs sysfs "$ROOT/sys"
mount_in --bind /dev "$ROOT/dev"
# The app's wheels are fetched here, by this host's own pip and its settings (index, proxy, CA), and the
# chroot installs them with --no-index: the chroot needs no network and no copy of the host's trust store.
# pip download skips what the cache already holds, so a cached build asks the index only for the versions.
mkdir -p "$CACHE/wheels"
wheels_stamp=$CACHE/wheels/.requirements.sha256
req_sum=$(sha256sum "$STAGE/app/requirements.txt" | cut -d' ' -f1)
if [ "$(cat "$wheels_stamp" 2>/dev/null)" != "$req_sum" ]; then
    say "wheels: pip download -r app/requirements.txt"
    python3 -m pip download -q --disable-pip-version-check --only-binary=:all: --python-version 3.11 \
        --implementation cp --platform manylinux2014_x86_64 -d "$CACHE/wheels" -r "$STAGE/app/requirements.txt" ||
        die "pip download of the app's wheels failed"
    echo "$req_sum" >"$wheels_stamp"
fi
mount_in --bind "$CACHE/wheels" "$ROOT/var/cache/stackinit-wheels"

# The venv is the slow part after the base tree: reuse one built from the same requirements on the same base.
VENV_KEY=$(cat "$STAGE/app/requirements.txt" "$BASE/inputs" | sha256sum | cut -c1-16)
VENV_CACHE=$CACHE/venv-$VENV_KEY.tar
if [ -f "$VENV_CACHE" ]; then
    mkdir -p "$ROOT/srv/app"
    tar -C "$ROOT/srv/app" -xf "$VENV_CACHE"
    say "venv: cached"
fi

t0=$SECONDS
chroot "$ROOT" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    LANG=C.UTF-8 STACKINIT_WHEELS=/var/cache/stackinit-wheels \
    bash /tmp/stackinit-src/image/install.sh --src /tmp/stackinit-src --mode "$MODE" --chroot \
    ${IMDS_ENDPOINT:+--imds-endpoint "$IMDS_ENDPOINT"} ${STATUS_AGENT:+--status-agent}
say "install.sh took $((SECONDS - t0)) s"
if [ ! -f "$VENV_CACHE" ]; then
    tar -C "$ROOT/srv/app" -cf "$VENV_CACHE.tmp" venv && mv -f "$VENV_CACHE.tmp" "$VENV_CACHE"
fi
unmount_inner
rm -rf "$STAGE"

# ---- outputs --------------------------------------------------------------------------------------------
kernel=$(ls "$ROOT"/boot/vmlinuz-* | sort -V | tail -n1)
initrd=$(ls "$ROOT"/boot/initrd.img-* | sort -V | tail -n1)
[ -f "$kernel" ] && [ -f "$initrd" ] || die "no kernel or initrd in the image's /boot"
cp "$kernel" "$OUT/vmlinuz.new" && mv "$OUT/vmlinuz.new" "$OUT/vmlinuz"
cp "$initrd" "$OUT/initrd.img.new" && mv "$OUT/initrd.img.new" "$OUT/initrd.img"
# QEMU boots the kernel directly, so the image's /boot copies are dead weight (an AMI boots them via GRUB).
rm -f "$ROOT"/boot/initrd.img-* "$ROOT"/boot/vmlinuz-* "$ROOT"/boot/System.map-*

extra=$(cat "$ROOT/etc/stackinit/kernel-cmdline" 2>/dev/null || true)
echo "root=/dev/vda rootfstype=ext4 rw console=ttyS0 quiet fsck.mode=skip panic=-1 ${extra}" | sed 's/ *$//' >"$OUT/cmdline"

tree_kb=$(du -sk "$ROOT" | cut -f1)
if [ -z "$SIZE" ]; then
    # The tree plus a quarter and 64 MiB: room for logs and the sqlite db on a writable root.
    SIZE=$(((tree_kb + tree_kb / 4 + 65536) / 1024))M
fi
t0=$SECONDS
rm -f "$OUT/root.ext4.new"
mkfs.ext4 -q -F -L stackinit-root -d "$ROOT" "$OUT/root.ext4.new" "$SIZE" ||
    die "mkfs.ext4 -d failed"
mv "$OUT/root.ext4.new" "$OUT/root.ext4"
say "mkfs.ext4 -d took $((SECONDS - t0)) s"
cleanup
safe_rm_work

{
    echo "MODE=$MODE"
    echo "BASE_KEY=$KEY"
    echo "TREE_BYTES=$((tree_kb * 1024))"
    echo "IMAGE_BYTES=$(stat -c %s "$OUT/root.ext4")"
    echo "IMAGE_USED_BYTES=$(($(stat -c %b "$OUT/root.ext4") * 512))"
    echo "KERNEL=$(basename "$kernel")"
    echo "BUILD_SECONDS=$((SECONDS - START))"
} >"$OUT/image.env"
say "done in $((SECONDS - START)) s: $OUT/{vmlinuz,initrd.img,root.ext4,cmdline} (mode $MODE, tree $((tree_kb / 1024)) MiB)"

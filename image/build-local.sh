#!/usr/bin/env bash
# Build the image locally and offline (once cached): the `null.local` source of packer/stackinit.pkr.hcl runs
# this. It debootstraps a minimal Debian bookworm root (cached under $IMAGE_CACHE_DIR, keyed by everything that
# goes into it), runs image/install.sh in a chroot of a copy, writes the root's /etc/fstab and GRUB menu, and
# makes one bootable disk of it (image/make-disk.sh) in $IMAGE_OUTPUT_DIR:
#   disk.raw    GPT: BIOS boot partition + EFI system partition (GRUB for BIOS and for UEFI) + the ext4 root
#               (label stackinit-root, a UUID per build). Boots under SeaBIOS or OVMF from NVMe or virtio, and
#               is what the amazon-import post-processor uploads as an AMI.
#   image.env   mode, root UUID, kernel command line, sizes and build time, for scripts
#
# Environment (set by the Packer template; defaults for running it by hand from the repo root):
#   STACKINIT_BINARY (required)   STACKINIT_BOOT_MODE=pid1|systemd|seed   STACKINIT_SRC=.
#   STACKINIT_APP_DIR, STACKINIT_SYSTEMD_DIR: take app/ or systemd/ from elsewhere (default: $STACKINIT_SRC/...)
#   STACKINIT_IMDS_ENDPOINT=http://10.0.2.100:80 (where the tests' guestfwd puts a fake IMDS; "" for none)
#   IMAGE_OUTPUT_DIR=.cache/image/out   IMAGE_CACHE_DIR=.cache/image   IMAGE_MIRROR (default: this host's apt mirror)
#   IMAGE_ROOT_MODE=rw|ro (ro: fstab keeps the root read-only, with a tmpfs for the per-instance state)
#   IMAGE_SIZE (root file system, e.g. 2G or 1500M; default: the tree plus headroom)   IMAGE_SUITE=bookworm
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
ROOT_MODE=${IMAGE_ROOT_MODE:-rw}
IMDS_ENDPOINT=${STACKINIT_IMDS_ENDPOINT-http://10.0.2.100:80}

say() { printf 'build-local: [%4ds] %s\n' $((SECONDS - START)) "$*"; }
die() { printf 'build-local: error: %s\n' "$*" >&2; exit 1; }

case "$MODE" in pid1|systemd|seed) ;; *) die "STACKINIT_BOOT_MODE must be pid1, systemd or seed" ;; esac
case "$ROOT_MODE" in rw|ro) ;; *) die "IMAGE_ROOT_MODE must be rw or ro" ;; esac
[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, chroot, mounts)"
[ -n "$BINARY" ] || die "STACKINIT_BINARY is required (the stackinit binary to bake in)"
for tool in debootstrap mkfs.ext4 chroot mount tar sha256sum sgdisk mkfs.fat mcopy; do
    command -v "$tool" >/dev/null ||
        die "missing tool: $tool (apt-get install debootstrap e2fsprogs gdisk dosfstools mtools)"
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
packages=(linux-image-cloud-amd64 initramfs-tools busybox iproute2 python3 python3-venv ca-certificates kmod
    # The bootloader the disk boots with (BIOS and UEFI), made from the image's own packages.
    grub-pc-bin grub-efi-amd64-bin
    # What an instance nobody logs into still needs: SSH for the day someone must, time, a root that grows
    # with its volume, and sudo for the SSH user.
    openssh-server chrony cloud-guest-utils sudo)
case "$MODE" in
    # dbus: logind needs it, and logind is what powers off on the ACPI power button under systemd.
    systemd) packages+=(systemd-sysv dbus) ;;
    seed) packages+=(systemd-sysv dbus nginx-light supervisor) ;;
esac
RECIPE=3 # bump when the debootstrap recipe below changes
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
# shellcheck source=app-manifest.sh
. "$SRC/image/app-manifest.sh"
read_app_manifest "$STAGE/app"
REQUIREMENTS=$STAGE/app/$APP_REQUIREMENTS
mkdir -p "$CACHE/wheels"
wheels_stamp=$CACHE/wheels/.requirements.sha256
req_sum=$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)
if ! grep -qx "$req_sum" "$wheels_stamp" 2>/dev/null; then
    say "wheels: pip download -r app/$APP_REQUIREMENTS"
    python3 -m pip download -q --disable-pip-version-check --only-binary=:all: --python-version 3.11 \
        --implementation cp --platform manylinux2014_x86_64 -d "$CACHE/wheels" -r "$REQUIREMENTS" ||
        die "pip download of the app's wheels failed"
    echo "$req_sum" >>"$wheels_stamp"
fi
mount_in --bind "$CACHE/wheels" "$ROOT/var/cache/stackinit-wheels"

# The venv is the slow part after the base tree: reuse one built from the same requirements on the same base.
VENV_KEY=$(cat "$REQUIREMENTS" "$BASE/inputs" | sha256sum | cut -c1-16)
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
    ${IMDS_ENDPOINT:+--imds-endpoint "$IMDS_ENDPOINT"}
say "install.sh took $((SECONDS - t0)) s"
if [ ! -f "$VENV_CACHE" ]; then
    tar -C "$ROOT/srv/app" -cf "$VENV_CACHE.tmp" venv && mv -f "$VENV_CACHE.tmp" "$VENV_CACHE"
fi
unmount_inner
rm -rf "$STAGE"

# ---- boot: fstab, GRUB for BIOS and UEFI, one disk ---------------------------------------------------------
kernel=$(ls "$ROOT"/boot/vmlinuz-* | sort -V | tail -n1)
KVER=${kernel##*/vmlinuz-}
[ -f "$kernel" ] && [ -f "$ROOT/boot/initrd.img-$KVER" ] || die "no kernel or initrd in the image's /boot"
# One UUID per build (every clone of this image shares it, as clones of any AMI do), chosen now because the
# fstab and GRUB name it before the file system exists.
ROOT_UUID=$(cat /proc/sys/kernel/random/uuid)
ROOT_LABEL=stackinit-root

write_fstab() {
    local root_options=defaults
    [ "$ROOT_MODE" = ro ] && root_options=ro
    cat >"$ROOT/etc/fstab" <<EOF
# /etc/fstab of the stackinit image (image/build-local.sh), read by stackinit as PID 1 at boot.
# The root: GRUB boots it read-only ("ro" on the kernel command line); its options here say what it becomes.
UUID=$ROOT_UUID  /  ext4  $root_options,errors=remount-ro  0  1
EOF
    if [ "$ROOT_MODE" = ro ]; then
        cat >>"$ROOT/etc/fstab" <<EOF
# Read-only root: the per-instance state (host keys, machine id) lives until power-off, unless a volume is
# mounted here instead.
tmpfs  /var/lib/stackinit  tmpfs  mode=0755,size=16m,nosuid,nodev  0  0
EOF
    fi
    cat >>"$ROOT/etc/fstab" <<EOF
# An optional data volume: any attached volume with the ext4 label stackinit-data (mkfs.ext4 -L stackinit-data).
LABEL=stackinit-data  /srv/data  ext4  defaults,nofail  0  2
EOF
}

# The one menu, read by both GRUBs from the root file system. timeout=0: nobody is at the console of an
# instance; EC2's serial console can still reach GRUB's prompt by holding Esc.
write_grub_cfg() {
    local extra cmdline
    extra=$(cat "$ROOT/etc/stackinit/kernel-cmdline" 2>/dev/null || true)
    # ro: as Debian and Ubuntu boot; fstab decides. The serial console last, so it is /dev/console (EC2's
    # serial console and QEMU's -serial). nvme_core.io_timeout: what AWS asks for EBS on NVMe.
    # no_timer_check: a virtual machine on a busy host (TCG here, a noisy neighbour there) can miss the
    # kernel's early check of the IO-APIC timer, which then panics ("IO-APIC + timer doesn't work"), as
    # cloud images of other distributions guard against.
    cmdline="root=UUID=$ROOT_UUID ro console=tty0 console=ttyS0,115200 nvme_core.io_timeout=4294967295"
    cmdline="$cmdline no_timer_check quiet panic=-1 $extra"
    CMDLINE=$(echo "$cmdline" | sed 's/ *$//')
    mkdir -p "$ROOT/boot/grub"
    cat >"$ROOT/boot/grub/grub.cfg" <<EOF
# GRUB menu of the stackinit image (image/build-local.sh), for the BIOS and the UEFI GRUB alike.
serial --unit=0 --speed=115200
terminal_input console serial
terminal_output console serial
set timeout=0
menuentry "stackinit, Debian $SUITE, $KVER" {
    linux /boot/vmlinuz-$KVER $CMDLINE
    initrd /boot/initrd.img-$KVER
}
EOF
}

# GRUB images made by the image's own grub-mkimage (grub-pc-bin, grub-efi-amd64-bin), every module built in,
# with an embedded config that finds the root by UUID and reads the menu there.
grub_images() {
    local boot=$WORK/boot common
    mkdir -p "$boot" "$ROOT/tmp/grub"
    cat >"$ROOT/tmp/grub/early.cfg" <<EOF
search --no-floppy --fs-uuid --set=root $ROOT_UUID
set prefix=(\$root)/boot/grub
configfile \$prefix/grub.cfg
EOF
    common="part_gpt ext2 search search_fs_uuid configfile normal linux echo serial terminal test"
    # shellcheck disable=SC2086 # module lists
    chroot "$ROOT" grub-mkimage -O i386-pc -o /tmp/grub/core.img -c /tmp/grub/early.cfg -p /boot/grub \
        biosdisk $common || die "grub-mkimage (i386-pc) failed"
    # shellcheck disable=SC2086
    chroot "$ROOT" grub-mkimage -O x86_64-efi -o /tmp/grub/BOOTX64.EFI -c /tmp/grub/early.cfg -p /boot/grub \
        fat efi_gop $common || die "grub-mkimage (x86_64-efi) failed"
    cp "$ROOT/tmp/grub/core.img" "$ROOT/tmp/grub/BOOTX64.EFI" "$ROOT/usr/lib/grub/i386-pc/boot.img" "$boot/"
    rm -rf "$ROOT/tmp/grub"
}

write_fstab
write_grub_cfg
grub_images

tree_kb=$(du -sk "$ROOT" | cut -f1)
case "$SIZE" in
    "") ROOT_MIB=$(((tree_kb + tree_kb / 4 + 65536) / 1024)) ;; # the tree, a quarter more and 64 MiB for logs
    *[Gg]) ROOT_MIB=$((${SIZE%[Gg]} * 1024)) ;;
    *[Mm]) ROOT_MIB=${SIZE%[Mm]} ;;
    *) die "IMAGE_SIZE must be like 2G or 1500M, not $SIZE" ;;
esac
t0=$SECONDS
bash "$SRC/image/make-disk.sh" --tree "$ROOT" --uuid "$ROOT_UUID" --label "$ROOT_LABEL" --root-mib "$ROOT_MIB" \
    --boot-img "$WORK/boot/boot.img" --core-img "$WORK/boot/core.img" --efi-img "$WORK/boot/BOOTX64.EFI" \
    --out "$OUT/disk.raw"
say "disk (GPT, GRUB for BIOS and UEFI, ext4 root of $ROOT_MIB MiB) took $((SECONDS - t0)) s"
cleanup
safe_rm_work
rm -f "$OUT/vmlinuz" "$OUT/initrd.img" "$OUT/root.ext4" "$OUT/cmdline" # outputs of older builds

{
    echo "MODE=$MODE"
    echo "ROOT_MODE=$ROOT_MODE"
    echo "BASE_KEY=$KEY"
    echo "ROOT_UUID=$ROOT_UUID"
    echo "ROOT_LABEL=$ROOT_LABEL"
    echo "KERNEL=vmlinuz-$KVER"
    echo "CMDLINE=\"$CMDLINE\""
    echo "ROOT_MIB=$ROOT_MIB"
    echo "TREE_BYTES=$((tree_kb * 1024))"
    echo "IMAGE_BYTES=$(stat -c %s "$OUT/disk.raw")"
    echo "IMAGE_USED_BYTES=$(($(stat -c %b "$OUT/disk.raw") * 512))"
    echo "BUILD_SECONDS=$((SECONDS - START))"
} >"$OUT/image.env"
say "done in $((SECONDS - START)) s: $OUT/disk.raw (mode $MODE, root $ROOT_MODE, tree $((tree_kb / 1024)) MiB)"

#!/usr/bin/env bash
# Assemble the bootable disk of the local image from a finished root tree, the way an AMI's root volume is
# laid out (Debian's and Ubuntu's cloud images use the same partition numbers):
#
#   GPT  p14  1 MiB   BIOS boot partition: GRUB's core.img, for legacy BIOS (SeaBIOS, EC2's x86 BIOS)
#        p15  62 MiB  EFI system partition (FAT32): GRUB as \EFI\BOOT\BOOTX64.EFI, the removable-media path
#                     UEFI firmware boots with no NVRAM entry (OVMF, EC2's UEFI)
#        p1   rest    the ext4 root (label and UUID given), last on the disk so growpart can grow it
#
# Both GRUBs carry every module they need and a tiny embedded config that finds the root by its UUID and
# reads /boot/grub/grub.cfg from it, so there is one menu for both firmwares and nothing else on the ESP.
# No loop devices and no grub-install: the partitions are written into the file at their offsets
# (sgdisk, mkfs.ext4 -E offset, mkfs.fat --offset, mtools), and the BIOS boot code is patched in place as
# grub-bios-setup does. Only the image's own GRUB files are used (grub-mkimage ran in the image's chroot).
#
#   make-disk.sh --tree DIR --uuid UUID --label LABEL --root-mib N \
#                --boot-img boot.img --core-img core.img --efi-img BOOTX64.EFI --out disk.raw
set -euo pipefail

SECTOR=512
BIOS_START=2048      # 1 MiB: the usual alignment
BIOS_SECTORS=2048    # 1 MiB: core.img is ~100 KiB
ESP_START=4096       # 2 MiB
ESP_SECTORS=126976   # up to 64 MiB: 62 MiB is FAT32 with 1-sector clusters, as UEFI asks for
ROOT_START=131072    # 64 MiB
GPT_BACKUP_SECTORS=2048 # room at the end for the backup GPT (it needs 33 sectors; keep the MiB alignment)

die() { printf 'make-disk: error: %s\n' "$*" >&2; exit 1; }

TREE="" UUID="" LABEL="" ROOT_MIB="" BOOT_IMG="" CORE_IMG="" EFI_IMG="" OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --tree) TREE=$2 ;;
        --uuid) UUID=$2 ;;
        --label) LABEL=$2 ;;
        --root-mib) ROOT_MIB=$2 ;;
        --boot-img) BOOT_IMG=$2 ;;
        --core-img) CORE_IMG=$2 ;;
        --efi-img) EFI_IMG=$2 ;;
        --out) OUT=$2 ;;
        *) die "unknown argument: $1" ;;
    esac
    shift 2
done
for v in TREE UUID LABEL ROOT_MIB BOOT_IMG CORE_IMG EFI_IMG OUT; do
    [ -n "${!v}" ] || die "--$(tr 'A-Z_' 'a-z-' <<<"$v") is required"
done
for tool in sgdisk mkfs.ext4 mkfs.fat mmd mcopy dd truncate; do
    command -v "$tool" >/dev/null || die "missing tool: $tool (apt-get install gdisk e2fsprogs dosfstools mtools)"
done

# Write BYTES (printf escapes) at byte OFFSET of the disk, in place.
poke() {
    printf "$2" | dd of="$OUT.new" bs=1 seek="$1" conv=notrunc status=none
}

# A little-endian u64 as printf escapes.
le64() {
    local v=$1 i out=""
    for i in 0 1 2 3 4 5 6 7; do
        out+=$(printf '\\x%02x' $(((v >> (8 * i)) & 255)))
    done
    printf '%s' "$out"
}

partition_table() {
    local root_sectors=$((ROOT_MIB * 2048))
    local total=$(((ROOT_START + root_sectors + GPT_BACKUP_SECTORS) * SECTOR))
    rm -f "$OUT.new"
    truncate -s "$total" "$OUT.new"
    sgdisk --clear \
        --new=14:$BIOS_START:$((BIOS_START + BIOS_SECTORS - 1)) --typecode=14:EF02 --change-name=14:bios \
        --new=15:$ESP_START:$((ESP_START + ESP_SECTORS - 1)) --typecode=15:EF00 --change-name=15:esp \
        --new=1:$ROOT_START:$((ROOT_START + root_sectors - 1)) --typecode=1:8304 --change-name=1:root \
        "$OUT.new" >/dev/null || die "sgdisk failed"
}

root_filesystem() {
    # -E offset: straight into partition 1, no intermediate file to copy. -d copies the tree with owners and
    # modes. The features are mke2fs's defaults of the host; GRUB only needs to read the ext4 it makes.
    mkfs.ext4 -q -F -L "$LABEL" -U "$UUID" -E offset=$((ROOT_START * SECTOR)) -d "$TREE" "$OUT.new" \
        "$((ROOT_MIB * 1024))k" || die "mkfs.ext4 -d failed"
}

esp() {
    # -s 1: one sector per cluster, so 62 MiB has the clusters FAT32 needs. (It warns that the file is bigger
    # than the file system: that is the point of --offset.)
    local log
    log=$(mkfs.fat -F 32 -s 1 -n ESP --offset=$ESP_START "$OUT.new" $((ESP_SECTORS / 2)) 2>&1) ||
        die "mkfs.fat failed: $log"
    local at="$OUT.new@@$((ESP_START * SECTOR))"
    # mtools checks the geometry against a floppy's unless told not to.
    MTOOLS_SKIP_CHECK=1 mmd -i "$at" ::/EFI ::/EFI/BOOT
    MTOOLS_SKIP_CHECK=1 mcopy -i "$at" "$EFI_IMG" ::/EFI/BOOT/BOOTX64.EFI
}

bios_boot() {
    local core_sectors=$((($(stat -c %s "$CORE_IMG") + SECTOR - 1) / SECTOR))
    [ "$core_sectors" -le "$BIOS_SECTORS" ] || die "core.img ($core_sectors sectors) does not fit the BIOS boot partition"
    [ "$(stat -c %s "$BOOT_IMG")" -eq $SECTOR ] || die "boot.img is not one sector"
    # The MBR's boot code: boot.img's first 440 bytes; the disk signature and the protective partition
    # table sgdisk wrote after them stay.
    dd if="$BOOT_IMG" of="$OUT.new" bs=440 count=1 conv=notrunc status=none
    # boot.img loads the first sector of core.img from this LBA (GRUB_BOOT_MACHINE_KERNEL_SECTOR, 0x5c) ...
    poke $((0x5c)) "$(le64 $BIOS_START)"
    # ... and on a hard disk trusts the drive number the BIOS passes (grub-bios-setup nops this jump).
    poke $((0x66)) '\x90\x90'
    dd if="$CORE_IMG" of="$OUT.new" bs=$SECTOR seek=$BIOS_START conv=notrunc status=none
    # core.img's first sector (diskboot.img) reads the rest from its blocklist, whose start sector
    # grub-mkimage leaves for the installer: the blocklist is the last 12 bytes of that sector
    # (start u64, count u16 already set, segment u16).
    poke $((BIOS_START * SECTOR + SECTOR - 12)) "$(le64 $((BIOS_START + 1)))"
}

partition_table
root_filesystem
esp
bios_boot
mv -f "$OUT.new" "$OUT"

#!/usr/bin/env bash
# Boot-time benchmark of the golden image under QEMU TCG: QEMU start -> GRUB -> /healthz 200 (and -> GET / 200),
# for
#   pid1     stackinit as PID 1 (kernel init=)
#   systemd  stackinit.service under systemd
#   seed     the stack stackinit replaces: systemd + nginx + supervisor + gunicorn
# all with the same kernel, app and build script (image/build-local.sh via `packer build -only=null.local`,
# boot_mode as the only difference), each disk booted as EC2 boots it: firmware (SeaBIOS and/or OVMF), GRUB,
# NVMe. Prints each mode's times, the ratios to the seed, and the image sizes.
#
#   benches/boot/run.sh [--runs N] [--binary PATH] [--modes "pid1 systemd seed"] [--firmware "bios uefi"] [--keep]
# (--keep leaves the work directory, with each boot's serial console log, for a timeline)
# Needs root, packer, qemu-system-x86, qemu-utils, ovmf, debootstrap, gdisk, dosfstools, mtools, curl, bc.
# Builds are cached under .cache/image (IMAGE_CACHE_DIR overrides)
# (the first build of each mode debootstraps: a few minutes). Numbers vary with host load: run it quiet.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
RUNS=1
BINARY=${STACKINIT_BINARY:-$ROOT/target/debug/stackinit}
MODES="pid1 systemd seed"
FIRMWARE=bios
KEEP=0
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS=$2; shift 2 ;;
        --binary) BINARY=$2; shift 2 ;;
        --modes) MODES=$2; shift 2 ;;
        --firmware) FIRMWARE=$2; shift 2 ;;
        --keep) KEEP=1; shift ;;
        *) echo "usage: $0 [--runs N] [--binary PATH] [--modes LIST] [--firmware LIST] [--keep]" >&2; exit 2 ;;
    esac
done
[ -x "$BINARY" ] || { echo "no stackinit binary at $BINARY (cargo build first)" >&2; exit 1; }
WORK=$(mktemp -d /tmp/stackinit-bootbench.XXXXXX)
QEMU_PID=""
cleanup() {
    [ -n "$QEMU_PID" ] && kill "$QEMU_PID" 2>/dev/null && wait "$QEMU_PID" 2>/dev/null
    if [ "$KEEP" = 1 ]; then echo "kept $WORK (console logs, images)"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

now() { date +%s.%N; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
qmp_powerdown() {
    python3 - "$1" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f = s.makefile("rw")
f.readline()
for cmd in ("qmp_capabilities", "system_powerdown"):
    f.write(json.dumps({"execute": cmd}) + "\n"); f.flush()
    while '"return"' not in f.readline():
        pass
PY
}

# One boot of $out/disk.raw through firmware $2 (a fresh clone each time): sets GRUB, HZ, PAGE, OFF (seconds).
boot_once() {
    local mode=$1 fw=$2 run=$3 port disk console fwargs=()
    port=$(free_port)
    disk=$WORK/$mode-disk.qcow2
    console=$WORK/console-$mode-$fw-$run.log
    rm -f "$disk" "$WORK/qmp.sock"
    qemu-img create -q -f qcow2 -F raw -b "$out/disk.raw" "$disk"
    [ "$fw" = uefi ] && fwargs=(-bios /usr/share/ovmf/OVMF.fd)
    local t0 t1
    t0=$(now)
    qemu-system-x86_64 -machine pc,accel=tcg -m 1024 -smp 1 -display none -monitor none -nodefaults \
        -no-reboot "${fwargs[@]}" \
        -drive "file=$disk,format=qcow2,if=none,id=root" -device nvme,drive=root,serial=root,bootindex=0 \
        -netdev "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:$port-:80" \
        -device virtio-net-pci,netdev=n0,romfile= -qmp "unix:$WORK/qmp.sock,server=on,wait=off" \
        -serial "file:$console" >"$WORK/qemu-$mode.log" 2>&1 &
    QEMU_PID=$!
    GRUB=""; HZ=""; PAGE=""
    while [ -z "$PAGE" ]; do
        kill -0 "$QEMU_PID" 2>/dev/null || { echo "QEMU exited early ($mode, $fw)"; tail -n 30 "$console"; exit 1; }
        # GRUB prints this as it loads the kernel: the firmware's and the bootloader's share of the boot.
        if [ -z "$GRUB" ] && grep -qa "Booting \`" "$console" 2>/dev/null; then
            GRUB=$(echo "$(now) - $t0" | bc)
        fi
        if [ -z "$HZ" ] && [ "$(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:$port/healthz")" = 200 ]; then
            HZ=$(echo "$(now) - $t0" | bc)
        fi
        if [ -n "$HZ" ] && [ "$(curl -s -o /dev/null -m 5 -w '%{http_code}' -H 'Host: localhost' "http://127.0.0.1:$port/")" = 200 ]; then
            PAGE=$(echo "$(now) - $t0" | bc)
        fi
        [ "$(echo "$(now) - $t0 > 900" | bc)" = 1 ] && { echo "timeout ($mode, $fw)"; exit 1; }
        [ -z "$PAGE" ] && sleep 0.2
    done
    t1=$(now)
    qmp_powerdown "$WORK/qmp.sock"
    # A guest that ignores the power button is killed after 120 s (and reported so).
    while kill -0 "$QEMU_PID" 2>/dev/null && [ "$(echo "$(now) - $t1 < 120" | bc)" = 1 ]; do sleep 0.2; done
    if kill -0 "$QEMU_PID" 2>/dev/null; then
        echo "    $mode ignored the power button for 120 s: killing QEMU"
        kill "$QEMU_PID"
    fi
    wait "$QEMU_PID" || true
    QEMU_PID=""
    OFF=$(echo "$(now) - $t1" | bc)
}

declare -A GRUB_AT HEALTHZ PAGES SIZE TREE POWEROFF
for mode in $MODES; do
    out=$WORK/$mode
    echo "==> build $mode"
    t0=$(now)
    CHECKPOINT_DISABLE=1 packer build -color=false -only=null.local -var "binary=$BINARY" -var "repo_dir=$ROOT" \
        -var "output_dir=$out" -var "cache_dir=${IMAGE_CACHE_DIR:-$ROOT/.cache/image}" -var "boot_mode=$mode" -var imds_endpoint= packer/ \
        >"$WORK/build-$mode.log" 2>&1 || { tail -n 30 "$WORK/build-$mode.log"; exit 1; }
    echo "    built in $(printf '%.0f' "$(echo "$(now) - $t0" | bc)") s"
    . "$out/image.env"
    SIZE[$mode]=$IMAGE_USED_BYTES
    TREE[$mode]=$TREE_BYTES
    for fw in $FIRMWARE; do
        grub_sum=0; hz_sum=0; page_sum=0; off_sum=0
        for run in $(seq 1 "$RUNS"); do
            boot_once "$mode" "$fw" "$run"
            printf '    %s run %d: GRUB at %.1f s, /healthz 200 at %.1f s, GET / 200 at %.1f s, power button -> exit %.1f s\n' \
                "$fw" "$run" "$GRUB" "$HZ" "$PAGE" "$OFF"
            grub_sum=$(echo "$grub_sum + $GRUB" | bc); hz_sum=$(echo "$hz_sum + $HZ" | bc)
            page_sum=$(echo "$page_sum + $PAGE" | bc); off_sum=$(echo "$off_sum + $OFF" | bc)
        done
        GRUB_AT[$mode/$fw]=$(echo "scale=2; $grub_sum / $RUNS" | bc)
        HEALTHZ[$mode/$fw]=$(echo "scale=2; $hz_sum / $RUNS" | bc)
        PAGES[$mode/$fw]=$(echo "scale=2; $page_sum / $RUNS" | bc)
        POWEROFF[$mode/$fw]=$(echo "scale=2; $off_sum / $RUNS" | bc)
    done
done

echo
printf '%-13s %8s %10s %8s %11s %16s %10s %9s\n' mode/firmware grub_s healthz_s page_s poweroff_s \
    vs_seed_healthz image_MiB tree_MiB
for mode in $MODES; do
    for fw in $FIRMWARE; do
        ratio="-"
        [ -n "${HEALTHZ[seed/$fw]:-}" ] && ratio=$(echo "scale=2; ${HEALTHZ[$mode/$fw]} / ${HEALTHZ[seed/$fw]}" | bc)
        printf '%-13s %8s %10s %8s %11s %16s %10s %9s\n' "$mode/$fw" "${GRUB_AT[$mode/$fw]}" "${HEALTHZ[$mode/$fw]}" \
            "${PAGES[$mode/$fw]}" "${POWEROFF[$mode/$fw]}" "$ratio" "$((SIZE[$mode] / 1048576))" "$((TREE[$mode] / 1048576))"
    done
done
echo "(TCG, $RUNS run(s) each, load average now: $(cut -d' ' -f1-3 /proc/loadavg))"

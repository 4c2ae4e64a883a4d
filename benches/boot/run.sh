#!/usr/bin/env bash
# Boot-time benchmark of the golden image under QEMU TCG: QEMU start -> /healthz 200 (and -> GET / 200), for
#   pid1     stackinit as PID 1 (kernel init=)
#   systemd  stackinit.service under systemd
#   seed     the stack stackinit replaces: systemd + nginx + supervisor + gunicorn
# all with the same kernel, app and build script (image/build-local.sh via `packer build -only=null.local`,
# boot_mode as the only difference). Prints each mode's times, the ratios to the seed, and the image sizes.
#
#   benches/boot/run.sh [--runs N] [--binary PATH] [--modes "pid1 systemd seed"] [--keep]
# (--keep leaves the work directory, with each boot's serial console log, for a timeline)
# Needs root, packer, qemu-system-x86, qemu-utils, debootstrap, curl, bc. Builds are cached under .cache/image
# (IMAGE_CACHE_DIR overrides)
# (the first build of each mode debootstraps: a few minutes). Numbers vary with host load: run it quiet.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
RUNS=1
BINARY=${STACKINIT_BINARY:-$ROOT/target/debug/stackinit}
MODES="pid1 systemd seed"
KEEP=0
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS=$2; shift 2 ;;
        --binary) BINARY=$2; shift 2 ;;
        --modes) MODES=$2; shift 2 ;;
        --keep) KEEP=1; shift ;;
        *) echo "usage: $0 [--runs N] [--binary PATH] [--modes LIST] [--keep]" >&2; exit 2 ;;
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

declare -A HEALTHZ PAGE SIZE TREE POWEROFF
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
    hz_sum=0; page_sum=0; off_sum=0
    for run in $(seq 1 "$RUNS"); do
        port=$(free_port)
        disk=$WORK/$mode-disk.qcow2
        rm -f "$disk" "$WORK/qmp.sock"
        qemu-img create -q -f qcow2 -F raw -b "$out/root.ext4" "$disk"
        t0=$(now)
        qemu-system-x86_64 -machine pc,accel=tcg -m 1024 -smp 1 -display none -monitor none -nodefaults \
            -no-reboot -kernel "$out/vmlinuz" -initrd "$out/initrd.img" -append "$(cat "$out/cmdline")" \
            -drive "file=$disk,format=qcow2,if=virtio" \
            -netdev "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:$port-:80" \
            -device virtio-net-pci,netdev=n0,romfile= -qmp "unix:$WORK/qmp.sock,server=on,wait=off" \
            -serial "file:$WORK/console-$mode-$run.log" >"$WORK/qemu-$mode.log" 2>&1 &
        QEMU_PID=$!
        hz=""; page=""
        while [ -z "$page" ]; do
            kill -0 "$QEMU_PID" 2>/dev/null || { echo "QEMU exited early ($mode)"; tail -n 30 "$WORK/console-$mode-$run.log"; exit 1; }
            if [ -z "$hz" ] && [ "$(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:$port/healthz")" = 200 ]; then
                hz=$(echo "$(now) - $t0" | bc)
            fi
            if [ -n "$hz" ] && [ "$(curl -s -o /dev/null -m 5 -w '%{http_code}' -H 'Host: localhost' "http://127.0.0.1:$port/")" = 200 ]; then
                page=$(echo "$(now) - $t0" | bc)
            fi
            [ "$(echo "$(now) - $t0 > 900" | bc)" = 1 ] && { echo "timeout ($mode)"; exit 1; }
            [ -z "$page" ] && sleep 0.2
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
        off=$(echo "$(now) - $t1" | bc)
        printf '    run %d: /healthz 200 at %.1f s, GET / 200 at %.1f s, power button -> exit %.1f s\n' "$run" "$hz" "$page" "$off"
        hz_sum=$(echo "$hz_sum + $hz" | bc); page_sum=$(echo "$page_sum + $page" | bc); off_sum=$(echo "$off_sum + $off" | bc)
    done
    HEALTHZ[$mode]=$(echo "scale=2; $hz_sum / $RUNS" | bc)
    PAGE[$mode]=$(echo "scale=2; $page_sum / $RUNS" | bc)
    POWEROFF[$mode]=$(echo "scale=2; $off_sum / $RUNS" | bc)
done

echo
printf '%-8s %12s %12s %12s %14s %12s %12s\n' mode healthz_s page_s poweroff_s vs_seed_healthz image_MiB tree_MiB
for mode in $MODES; do
    ratio="-"
    [ -n "${HEALTHZ[seed]:-}" ] && ratio=$(echo "scale=2; ${HEALTHZ[$mode]} / ${HEALTHZ[seed]}" | bc)
    printf '%-8s %12s %12s %12s %14s %12s %12s\n' "$mode" "${HEALTHZ[$mode]}" "${PAGE[$mode]}" "${POWEROFF[$mode]}" \
        "$ratio" "$((SIZE[$mode] / 1048576))" "$((TREE[$mode] / 1048576))"
done
echo "(TCG, $RUNS run(s) each, load average now: $(cut -d' ' -f1-3 /proc/loadavg))"

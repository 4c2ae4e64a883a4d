#!/bin/sh
# Test images only (install.sh --status-agent): answer `status` / `status --json` on a serial port, so a test
# can run `stackinit status` inside a VM that has no shell, no SSH and a restricted network. Nothing else is
# accepted: this is not a remote shell.
dev=${1:-/dev/ttyS1}
[ -c "$dev" ] || { echo "status-agent: no $dev" >&2; exit 1; }
stty -F "$dev" raw -echo 2>/dev/null || true
exec <"$dev" >"$dev"
while IFS= read -r line; do
    line=$(printf '%s' "$line" | tr -d '\r')
    case "$line" in
        "status"|"status --json")
            echo "BEGIN"
            /usr/local/bin/stackinit $line 2>&1
            echo "END rc=$?"
            ;;
        "") ;;
        *) echo "ERR only 'status' and 'status --json' are answered" ;;
    esac
done

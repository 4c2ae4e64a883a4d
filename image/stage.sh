#!/usr/bin/env bash
# Gather what install.sh needs into one directory ($STAGE): the binary, image/, app/ and systemd/.
# Used by the amazon-ebs build (one upload) and by build-local.sh (one copy into the chroot).
set -euo pipefail
: "${STACKINIT_BINARY:?path of the stackinit binary}" "${STACKINIT_SRC:=.}" "${STAGE:?}"
die() { printf 'stage: %s\n' "$*" >&2; exit 1; }
[ -x "$STACKINIT_BINARY" ] || die "no executable stackinit binary at $STACKINIT_BINARY (build it first)"
for d in image app systemd; do
    [ -d "$STACKINIT_SRC/$d" ] || die "missing $STACKINIT_SRC/$d"
done
rm -rf "$STAGE"
mkdir -p "$STAGE"
cp "$STACKINIT_BINARY" "$STAGE/stackinit"
for d in image app systemd; do
    # The app's caches and local state never belong in an image.
    tar -C "$STACKINIT_SRC" --exclude=__pycache__ --exclude='*.pyc' --exclude=db.sqlite3 \
        --exclude=staticfiles --exclude=venv -cf - "$d" | tar -C "$STAGE" -xf -
done
echo "stage: $STAGE ready ($(du -sh "$STAGE" | cut -f1))"

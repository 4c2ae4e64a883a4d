#!/usr/bin/env bash
# Gather what install.sh needs into one directory ($STAGE): the binary, image/, app/ and systemd/.
# Used by the amazon-ebs build (one upload) and by build-local.sh (one copy into the chroot).
# STACKINIT_APP_DIR / STACKINIT_SYSTEMD_DIR take app/ or systemd/ from elsewhere (default: $STACKINIT_SRC/...).
set -euo pipefail
: "${STACKINIT_BINARY:?path of the stackinit binary}" "${STACKINIT_SRC:=.}" "${STAGE:?}"
die() { printf 'stage: %s\n' "$*" >&2; exit 1; }
[ -x "$STACKINIT_BINARY" ] || die "no executable stackinit binary at $STACKINIT_BINARY (build it first)"
declare -A from=(
    [image]=$STACKINIT_SRC/image
    [app]=${STACKINIT_APP_DIR:-$STACKINIT_SRC/app}
    [systemd]=${STACKINIT_SYSTEMD_DIR:-$STACKINIT_SRC/systemd}
)
for d in image app systemd; do
    [ -d "${from[$d]}" ] || die "missing ${from[$d]}"
done
rm -rf "$STAGE"
mkdir -p "$STAGE"
cp "$STACKINIT_BINARY" "$STAGE/stackinit"
# Debug builds carry ~50 MB of symbols; the image needs none of them (the source binary is untouched).
if command -v strip >/dev/null; then strip --strip-debug "$STAGE/stackinit"; fi
for d in image app systemd; do
    mkdir -p "$STAGE/$d"
    # The app's caches and local state never belong in an image.
    tar -C "${from[$d]}" --exclude=__pycache__ --exclude='*.pyc' --exclude=db.sqlite3 \
        --exclude=staticfiles --exclude=venv -cf - . | tar -C "$STAGE/$d" -xf -
done
# The lean WSGI server and template is stackinit's, whichever app is baked.
cp "$STACKINIT_SRC/app/stackinit_wsgi.py" "$STAGE/image/stackinit_wsgi.py"
echo "stage: $STAGE ready ($(du -sh "$STAGE" | cut -f1))"

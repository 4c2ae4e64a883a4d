#!/usr/bin/env bash
# Bake stackinit, its config and the sample app into a machine image. Idempotent: run it again (or with
# another mode) and it converges. Works on a stock Ubuntu 24.04/22.04 AMI (over SSH from Packer's amazon-ebs,
# as root) and in a Debian bookworm chroot (image/build-local.sh).
#
#   install.sh --src DIR [--binary PATH] [--mode pid1|systemd|seed] [--imds-endpoint URL] [--chroot]
#
#   --src DIR      staged tree with image/, app/, systemd/ (and `stackinit` unless --binary is given). app/ is
#                  any WSGI app: its stackinit-app.env (image/app-manifest.sh) names the WSGI callable, the
#                  Django settings, the requirements, the package directory and the static files; its own
#                  stackinit.toml is the image's config, or install.sh writes one from the manifest.
#   --mode         pid1:    the kernel runs stackinit as init (`init=` on GRUB's command line: the AMI's
#                           /etc/default/grub.d, or the local disk's grub.cfg written by build-local.sh).
#                           DHCP, sshd, chronyd, a serial-console getty and the per-instance firstboot job
#                           are supervised services.
#                  systemd: systemd boots; stackinit.service is enabled; no nginx, no supervisor.
#                  seed:    the stack stackinit replaces (systemd + nginx + supervisor + gunicorn), same app,
#                           for the boot-time comparison only.
#   --imds-endpoint URL  bake `[init.imds] enabled = true, endpoint = URL` (local images: the fake IMDS that
#                  the tests forward into the guest). Unset on AMIs: the real IMDS, asked when DMI says EC2.
#   --chroot       building a chroot, not a running machine: start nothing, touch no bootloader.
# Environment: STACKINIT_BOOT_MODE, STACKINIT_SRC, STACKINIT_BINARY, STACKINIT_IMDS_ENDPOINT, IMAGE_CHROOT=1,
# STACKINIT_WHEELS=DIR (install the app's wheels from DIR with --no-index: the local build is offline).
#
# Why a venv from PyPI rather than Debian's python3-django: the app pins Django 5.2 LTS (app/requirements.txt),
# which is what its tests run. Debian bookworm ships Django 3.2, Ubuntu 22.04 3.2 and 24.04 4.2, so the distro
# packages would give every base a different Django. The venv gives all of them the same, tested versions; the
# local build downloads the wheels once on the host (cached) and installs them here offline.
set -euo pipefail

MODE=${STACKINIT_BOOT_MODE:-pid1}
SRC=${STACKINIT_SRC:-}
BINARY=${STACKINIT_BINARY:-}
IMDS_ENDPOINT=${STACKINIT_IMDS_ENDPOINT:-}
CHROOT=${IMAGE_CHROOT:-0}

say() { printf 'install.sh: %s\n' "$*"; }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --src) SRC=$2; shift 2 ;;
        --binary) BINARY=$2; shift 2 ;;
        --mode) MODE=$2; shift 2 ;;
        --imds-endpoint) IMDS_ENDPOINT=$2; shift 2 ;;
        --chroot) CHROOT=1; shift ;;
        -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
        *) die "unknown argument: $1" ;;
    esac
done

case "$MODE" in pid1|systemd|seed) ;; *) die "--mode must be pid1, systemd or seed, not '$MODE'" ;; esac
[ -n "$SRC" ] || die "--src DIR is required"
[ -n "$BINARY" ] || BINARY=$SRC/stackinit
[ -x "$BINARY" ] || die "no executable stackinit binary at $BINARY"
for f in image/udhcpc.script image/app-manifest.sh image/stackinit_wsgi.py; do
    [ -e "$SRC/$f" ] || die "missing $SRC/$f"
done
# shellcheck source=app-manifest.sh
. "$SRC/image/app-manifest.sh"
read_app_manifest "$SRC/app"
[ -f "$SRC/app/stackinit.toml" ] || [ -n "$APP_WSGI" ] ||
    die "$SRC/app has neither a stackinit.toml nor a stackinit-app.env naming its WSGI callable"
[ "$MODE" != seed ] || [ -f "$SRC/app/manage.py" ] || die "--mode seed bakes the sample app only"
[ "$(id -u)" -eq 0 ] || die "run as root"

export DEBIAN_FRONTEND=noninteractive
LIB=/usr/local/lib/stackinit
APP=/srv/app

# ---- packages ---------------------------------------------------------------------------------------------
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

want=(python3 python3-venv iproute2 ca-certificates initramfs-tools kmod)
# udhcpc comes from busybox: the Debian root has `busybox`; a stock Ubuntu AMI gets `busybox-static` (main).
command -v busybox >/dev/null || want+=(busybox-static)
case "$MODE" in
    # What systemd would run beside the app, run by stackinit instead: sshd, chronyd, growpart (firstboot),
    # and sudo for the SSH user.
    pid1) want+=(openssh-server chrony cloud-guest-utils sudo)
        [ "$CHROOT" = 1 ] || want+=(curl) ;; # the SSM agent download
    # dbus for logind, which turns the ACPI power button (EC2 stop/terminate) into a clean shutdown.
    systemd) want+=(systemd-sysv dbus) ;;
    seed) want+=(systemd-sysv dbus nginx-light supervisor) ;;
esac
missing=()
for p in "${want[@]}"; do installed "$p" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    say "apt-get install ${missing[*]}"
    # No daemons started by package scripts while we build.
    policy=/usr/sbin/policy-rc.d
    made_policy=0
    if [ ! -e $policy ]; then printf '#!/bin/sh\nexit 101\n' >$policy; chmod 755 $policy; made_policy=1; fi
    apt-get -qq update
    apt-get -qq install -y --no-install-recommends "${missing[@]}" >/dev/null
    [ $made_policy -eq 1 ] && rm -f $policy
fi
if [ "$MODE" != seed ]; then
    # "nginx and supervisor are not installed": stackinit is the proxy and the supervisor.
    gone=()
    for p in nginx nginx-light nginx-core nginx-common supervisor; do installed "$p" && gone+=("$p"); done
    if [ ${#gone[@]} -gt 0 ]; then
        say "removing ${gone[*]}"
        apt-get -qq purge -y "${gone[@]}" >/dev/null
    fi
fi

# ---- the binary, its helpers, and the app ------------------------------------------------------------------
install -D -m 0755 "$BINARY" /usr/local/bin/stackinit
install -D -m 0755 "$SRC/image/udhcpc.script" $LIB/udhcpc.script
install -D -m 0755 "$SRC/image/dhcp.sh" $LIB/dhcp
install -D -m 0755 "$SRC/image/dhcp-ready.sh" $LIB/dhcp-ready
# The lean WSGI server and template (app/stackinit_wsgi.py of the stackinit repo), for apps that are not the
# sample: a generated config runs it from here.
install -D -m 0644 "$SRC/image/stackinit_wsgi.py" $LIB/stackinit_wsgi.py
if [ "$MODE" = pid1 ]; then
    install -D -m 0755 "$SRC/image/firstboot.sh" $LIB/firstboot
    install -D -m 0755 "$SRC/image/sshd.sh" $LIB/sshd
    install -D -m 0755 "$SRC/image/imds-get.py" $LIB/imds-get
else
    rm -f $LIB/firstboot $LIB/sshd $LIB/imds-get
fi

getent passwd www-data >/dev/null || die "no www-data user on this base"
mkdir -p $APP
# The code is root's; only the sqlite file, its journal (hence the directory) and the static files are the app's.
tar -C "$SRC/app" --exclude=__pycache__ --exclude='*.pyc' --exclude=db.sqlite3 --exclude=staticfiles \
    --exclude=venv -cf - . | tar -C $APP --no-same-owner -xf -
chown root:www-data $APP
chmod 0775 $APP

REQUIREMENTS=$SRC/app/$APP_REQUIREMENTS
[ -f "$REQUIREMENTS" ] || die "missing $REQUIREMENTS"
req_sum=$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)
if [ "$(cat $APP/venv/.requirements.sha256 2>/dev/null)" != "$req_sum" ] || ! [ -x $APP/venv/bin/python ]; then
    say "python venv $APP/venv from app/$APP_REQUIREMENTS"
    rm -rf $APP/venv
    python3 -m venv $APP/venv
    pip_from=()
    [ -n "${STACKINIT_WHEELS:-}" ] && pip_from=(--no-index --find-links "$STACKINIT_WHEELS")
    $APP/venv/bin/pip install -q --disable-pip-version-check --no-compile "${pip_from[@]}" -r "$REQUIREMENTS"
    echo "$req_sum" >$APP/venv/.requirements.sha256
fi
# Byte-compile now, the app and every installed package (Django imports asgiref and sqlparse too): a read-only
# root cannot write __pycache__ at boot, and every boot would pay for compiling them.
$APP/venv/bin/python -m compileall -q -x '/(venv|staticfiles)/' $APP $LIB/stackinit_wsgi.py >/dev/null 2>&1 || true
$APP/venv/bin/python -m compileall -q "$($APP/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" >/dev/null 2>&1 || true

# Migrate and collect static files at build time: the image then boots with nothing to write (a read-only root
# works). Each success leaves the stamp that app/stackinit.toml's `condition_path_exists` looks for, so boots
# skip the jobs; a failure stops the build before any stamp is written.
PACKAGES=$APP/$APP_PYTHONPATH
PACKAGES=${PACKAGES%/.}
app_env=(env PYTHONPATH="$PACKAGES" STACKINIT_STATIC_ROOT=$APP/staticfiles)
[ -z "$APP_SETTINGS" ] || app_env+=(DJANGO_SETTINGS_MODULE="$APP_SETTINGS")
mkdir -p $APP/staticfiles
chown www-data:www-data $APP/staticfiles
touch $APP/db.sqlite3
chown www-data:www-data $APP/db.sqlite3
rm -f $APP/.migrated-at-build $APP/.collected-at-build
if [ -n "$APP_SETTINGS" ]; then
    # `python -m django` is manage.py without the file: every Django project has it, whatever its layout.
    (cd $APP && runuser -u www-data -- "${app_env[@]}" $APP/venv/bin/python -m django migrate --noinput >/dev/null)
    touch $APP/.migrated-at-build
    if [ -z "$APP_STATIC" ]; then
        (cd $APP && runuser -u www-data -- "${app_env[@]}" $APP/venv/bin/python -m django collectstatic --noinput >/dev/null)
        touch $APP/.collected-at-build
    fi
fi

# What loading the app and serving its first page reads (modules, shared libraries, the app's own files), for
# the boot-time `stackinit readahead` job: a cold disk (EBS from a snapshot, or QEMU) is then read in parallel
# instead of one import at a time.
(cd "$PACKAGES" && runuser -u www-data -- "${app_env[@]}" STACKINIT_APP_WSGI="$APP_WSGI" $APP/venv/bin/python - <<'PY') >$APP/.readahead.list
import importlib, io, os, sys
sys.path.insert(0, os.getcwd())
module, callable_name = (os.environ.get("STACKINIT_APP_WSGI") or "mysite.wsgi:application").split(":")
application = getattr(importlib.import_module(module), callable_name)
environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "QUERY_STRING": "", "SERVER_NAME": "localhost",
           "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_HOST": "localhost",
           "wsgi.input": io.BytesIO(), "wsgi.errors": sys.stderr, "wsgi.url_scheme": "http"}
try:
    b"".join(application(environ, lambda status, headers, exc_info=None: None))
except Exception as err:
    print(f"readahead list: first page failed: {err}", file=sys.stderr)
files = {os.path.realpath(sys.executable)}
for module in list(sys.modules.values()):
    # The bytecode Python reads, or the source/extension when there is none (it only stats a .py with a .pyc).
    for path in (getattr(module, "__cached__", None), getattr(module, "__file__", None)):
        if isinstance(path, str) and os.path.isfile(path):
            files.add(os.path.realpath(path))
            break
with open("/proc/self/maps") as maps:
    files.update(line.split()[5] for line in maps if len(line.split()) >= 6 and line.split()[5].startswith("/"))
for root, dirs, names in os.walk("/srv/app"):
    dirs[:] = [d for d in dirs if d not in ("venv", "staticfiles")]
    files.update(os.path.join(root, n) for n in names if not n.startswith(".") and n != "db.sqlite3")
print("\n".join(sorted(f for f in files if os.path.isfile(f))))
PY

# ---- the machine's own services (pid1 mode) ---------------------------------------------------------------
# Under systemd, systemd runs sshd and chronyd and cloud-init makes each instance's host keys; as PID 1
# stackinit runs them as services from the config below. What is per instance (host keys, machine id, the SSH
# key from IMDS) is made at each instance's first boot by the firstboot job in /var/lib/stackinit, never here.
STATE=/var/lib/stackinit
# The login user: the base's cloud user where there is one (Ubuntu AMIs: ubuntu), else admin (as on Debian's
# AMIs). It may use the control socket (group stackinit) and sudo.
SSH_USER=ubuntu
machine_services() {
    getent group stackinit >/dev/null || groupadd --system stackinit
    getent passwd ubuntu >/dev/null || SSH_USER=admin
    if ! getent passwd "$SSH_USER" >/dev/null; then
        # "*": no password (not "!", locked, which sshd refuses even with a key). Serial-console logins need
        # one set by hand (`sudo passwd admin`).
        useradd --create-home --shell /bin/bash --password '*' "$SSH_USER"
    fi
    usermod -a -G stackinit "$SSH_USER"
    printf '%s ALL=(ALL) NOPASSWD:ALL\n' "$SSH_USER" >/etc/sudoers.d/90-stackinit-ssh-user
    chmod 0440 /etc/sudoers.d/90-stackinit-ssh-user
    visudo -cq -f /etc/sudoers.d/90-stackinit-ssh-user || die "bad sudoers drop-in"

    # sshd reads its host keys and authorized keys from the instance's state. The first file of
    # sshd_config.d wins for single-valued options, hence 10-.
    mkdir -p /etc/ssh/sshd_config.d
    cat >/etc/ssh/sshd_config.d/10-stackinit.conf <<EOF
# image/install.sh (pid1 mode): per-instance keys, made by the firstboot job at an instance's first boot.
HostKey $STATE/ssh/ssh_host_ed25519_key
HostKey $STATE/ssh/ssh_host_ecdsa_key
AuthorizedKeysFile $STATE/ssh/authorized_keys/%u .ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
EOF
    # The SSH user's `stackinit status` reaches the system's socket (a non-root user's default is its own);
    # pam_env reads this file for SSH and console logins alike.
    grep -qx 'STACKINIT_SOCKET=/run/stackinit/control.sock' /etc/environment 2>/dev/null ||
        echo 'STACKINIT_SOCKET=/run/stackinit/control.sock' >>/etc/environment

    # Amazon Time Sync Service, on every EC2 instance at a link-local address (Debian's chrony.conf reads
    # sources.d; the pool stays as a fallback).
    mkdir -p /etc/chrony/sources.d
    echo "server 169.254.169.123 prefer iburst minpoll 4 maxpoll 4" >/etc/chrony/sources.d/amazon-time-sync.sources

    mkdir -p $STATE
    chmod 0755 $STATE
    # One machine id per instance, made by firstboot; readers of /etc/machine-id follow the link.
    if [ "$(readlink /etc/machine-id 2>/dev/null)" != $STATE/machine-id ]; then
        rm -f /etc/machine-id
        ln -s $STATE/machine-id /etc/machine-id
    fi
}
if [ "$MODE" = pid1 ]; then machine_services; fi

# ---- SSM agent (pid1 mode on an EC2 build instance) --------------------------------------------------------
# Session Manager is how many fleets reach instances that have no SSH. Ubuntu's AMIs carry the agent as a snap,
# which needs snapd and systemd's mount units, neither of which runs under stackinit: the snap is replaced by
# AWS's .deb from the build region's bucket, and stackinit runs the agent as a service (`ssm-agent` below,
# skipped where the binary is missing, as on the local image, which is built offline).
SSM_AGENT=/usr/bin/amazon-ssm-agent
install_ssm_agent() {
    local region deb
    if [ -x $SSM_AGENT ]; then return 0; fi
    region=$(python3 "$SRC/image/imds-get.py" placement/region 2>/dev/null) || {
        say "no IMDS at build time: not an EC2 build, no SSM agent"
        return 0
    }
    if command -v snap >/dev/null && snap list amazon-ssm-agent >/dev/null 2>&1; then
        say "removing the amazon-ssm-agent snap (snapd does not run under stackinit)"
        snap remove --purge amazon-ssm-agent >/dev/null
    fi
    deb=$(mktemp --suffix=.deb)
    say "amazon-ssm-agent .deb from the $region bucket"
    curl -fsSL --retry 3 -o "$deb" \
        "https://s3.$region.amazonaws.com/amazon-ssm-$region/latest/debian_amd64/amazon-ssm-agent.deb" ||
        die "cannot download the SSM agent for $region"
    dpkg -i "$deb" >/dev/null || die "cannot install the SSM agent"
    rm -f "$deb"
    # The package enables a systemd unit; under stackinit the service below runs it.
    [ -x $SSM_AGENT ] || die "the SSM agent package has no $SSM_AGENT"
}
if [ "$MODE" = pid1 ] && [ "$CHROOT" != 1 ]; then install_ssm_agent; fi

# ---- config -----------------------------------------------------------------------------------------------
mkdir -p /etc/stackinit /logs
chmod 0755 /logs
# The services systemd would otherwise run (pid1 mode). None of them is critical: /healthz is about the app,
# and a load balancer must not drop an instance whose SSH or clock is unwell.
machine_services_config() {
    local imds_env=""
    [ -z "$IMDS_ENDPOINT" ] || imds_env=", STACKINIT_IMDS_ENDPOINT = \"$IMDS_ENDPOINT\""
    cat <<TOML

# Added by image/install.sh (pid1 mode): the machine's own services.

# Once per instance (by instance id): host keys, machine id, the SSH key from IMDS, the root grown to the volume;
# and at every boot the hostname. sethostname and growpart's BLKPG need CAP_SYS_ADMIN; resize2fs's online
# resize, CAP_SYS_RESOURCE.
[service.firstboot]
command = ["$LIB/firstboot"]
oneshot = true
critical = false
environment = { STACKINIT_SSH_USER = "$SSH_USER"$imds_env }
capabilities = ["CAP_SYS_ADMIN", "CAP_SYS_RESOURCE"]

[service.sshd]
command = ["$LIB/sshd"]
after = ["firstboot"]
critical = false
# sshd switches to each user, and their sessions are full logins (sudo): every capability, setuid allowed.
capabilities = ["ALL"]
no_new_privs = false
readiness = { tcp = "127.0.0.1:22", period = "2s" }
stop_grace = "5s"

[service.chronyd]
# -d: in the foreground, logging to stderr; it drops to _chrony itself, keeping only CAP_SYS_TIME.
command = ["chronyd", "-d", "-u", "_chrony"]
critical = false
capabilities = ["CAP_SYS_TIME", "CAP_SETUID", "CAP_SETGID", "CAP_NET_BIND_SERVICE", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER"]

# Session Manager (AWS Systems Manager), where the agent is installed (the amazon-ebs build): the instance's
# role and region come from IMDS. It runs shells for the operators it lets in: every capability.
[service.ssm-agent]
command = ["$SSM_AGENT"]
condition_path_exists = "$SSM_AGENT"
after = ["firstboot"]
critical = false
capabilities = ["ALL"]
no_new_privs = false
stop_grace = "10s"

# A login prompt on the serial console (EC2 Serial Console, QEMU -serial). No --hangup: a vhangup would also
# cut off stackinit's own console output on the same port. Logging in needs a password, which no image has.
[service.console-getty]
command = ["agetty", "--keep-baud", "115200,57600,38400,9600", "ttyS0", "vt220"]
after = ["firstboot"]                           # the prompt shows the instance's hostname
critical = false
capabilities = ["ALL"]
no_new_privs = false
stop_grace = "2s"
TOML
}

# A Django management command as a build-time job of app_config (whose local $env it reads): skipped at boot
# where the build left STAMP.
django_job() { # django_job NAME COMMAND STAMP
    cat <<TOML
[service.$1]
command = ["$APP/venv/bin/python", "-m", "django", "$2", "--noinput"]
directory = "$APP"
user = "www-data"
environment = { $env }
oneshot = true
after = ["user-data"]
condition_path_exists = "!$APP/.$3"
TOML
}

# The config of an app without its own stackinit.toml, from its manifest: the sample's shape (jobs that run
# once at build, one template loading the app and replicas forked from it, the proxy on 80 for every EC2 name)
# with the app's names in it.
app_config() {
    local env="PYTHONPATH = \"$PACKAGES\", STACKINIT_STATIC_ROOT = \"$APP/staticfiles\""
    [ -z "$APP_SETTINGS" ] || env="DJANGO_SETTINGS_MODULE = \"$APP_SETTINGS\", $env"
    local static_dir=$APP/staticfiles/ after=()
    [ -z "$APP_STATIC" ] || static_dir=$APP/${APP_STATIC%/}/
    cat <<TOML
# Written by image/install.sh from app/stackinit-app.env (WSGI $APP_WSGI). To change more than the manifest
# says, give the app its own stackinit.toml.

[init]
logs_dir = "/logs"
control_socket = "/run/stackinit/control.sock"
# As the sample's: long enough for a load balancer's health checks to take the instance out before it stops.
shutdown_drain = "25s"
# The launch's EC2 user data, when it is a TOML overlay of this file (the user-data job writes it).
user_data = "/run/stackinit/user-data.toml"

[service.user-data]
command = ["stackinit", "user-data"]
oneshot = true
critical = false
TOML
    after+=('"user-data"')
    if [ -n "$APP_SETTINGS" ]; then
        after+=('"migrate"')
        printf '\n# Run at the image build, which leaves the stamp; at boot only where it is missing (a database outside the image).\n'
        django_job migrate migrate migrated-at-build
        if [ -z "$APP_STATIC" ]; then
            after+=('"collectstatic"')
            printf '\n'
            django_job collectstatic collectstatic collected-at-build
        fi
    fi
    cat <<TOML

[service.readahead]
command = ["stackinit", "readahead", "$APP/.readahead.list"]
user = "www-data"
oneshot = true
condition_path_exists = "$APP/.readahead.list"
critical = false

# The app is loaded once, here, and the replicas are forked from it (stackinit_wsgi.py puts its working
# directory, the package directory, on sys.path).
[service.app-template]
command = ["$APP/venv/bin/python", "$LIB/stackinit_wsgi.py", "--template", "$APP_WSGI"]
directory = "$PACKAGES"
user = "www-data"
environment = { $env }
listen = "unix:/run/stackinit/app-template.sock"
after = [$(IFS=,; echo "${after[*]}")]
notify = true
start_secs = "100ms"
critical = false

[service.app]
command = ["stackinit", "fork-from", "/run/stackinit/app-template.sock"]
directory = "$PACKAGES"
user = "www-data"
environment = { $env }
replicas = $APP_REPLICAS
max_in_flight = 1
listen = "unix:/run/stackinit/app.sock"
after = ["app-template"]
restart = "always"
notify = true
stop_signal = "TERM"
stop_grace = "40s"

[proxy]
listen = ["0.0.0.0:80"]
user = "nobody"

[[proxy.server]]
server_name = ["*.compute.amazonaws.com", "*.compute-1.amazonaws.com", "*.compute.internal", "*.ec2.internal"]
default = true
  [[proxy.server.location]]
  path = "/static/"
  alias = "$static_dir"
  [[proxy.server.location]]
  path = "/"
  upstream = "app"
TOML
}

render_config() {
    # app/stackinit.toml is the AMI's config. As PID 1 nothing else configures the network, so the pid1 mode
    # adds the DHCP client as a service and makes the proxy wait for it; under systemd, systemd's own
    # networking does that job.
    local src=$SRC/app/stackinit.toml
    if [ ! -f "$src" ]; then
        src=/etc/stackinit/app.toml.generated
        app_config >"$src"
    fi
    if [ "$MODE" = pid1 ]; then
        awk '
            /^\[init\][[:space:]]*$/ {
                print
                print "# Added by image/install.sh (pid1 mode): the SSH user may ask for status and restarts."
                print "control_group = \"stackinit\""
                next
            }
            /^\[proxy\][[:space:]]*$/ && !done {
                print "# Added by image/install.sh (pid1 mode): the network, as a supervised service. The lease is"
                print "# usually already there (the initramfs took one so that instance facts come from IMDS at"
                print "# boot); this keeps it renewed, and re-acquires it if the link goes away."
                print "[service.dhcp]"
                print "command = [\"/usr/local/lib/stackinit/dhcp\"]"
                print "restart = \"always\""
                print "# A raw socket and port 68 for DHCP, and the right to set addresses and routes."
                print "capabilities = [\"CAP_NET_RAW\", \"CAP_NET_ADMIN\", \"CAP_NET_BIND_SERVICE\"]"
                print "readiness = { exec = [\"/usr/local/lib/stackinit/dhcp-ready\"], period = \"1s\", timeout = \"10s\" }"
                print ""
                print
                print "after = [\"dhcp\"]"
                done = 1
                next
            }
            { print }
        ' "$src"
    else
        cat "$src"
    fi
    if [ "$MODE" = pid1 ]; then machine_services_config; fi
    if [ -n "$IMDS_ENDPOINT" ]; then
        printf '\n# Added by image/install.sh: where instance facts come from on this platform.\n'
        # A generous timeout: a stand-in IMDS (QEMU guestfwd spawning a program per connection) is much slower
        # to answer than the real one, and the facts are asked for once, at boot.
        printf '[init.imds]\nenabled = true\nendpoint = "%s"\ntimeout = "10s"\n' "$IMDS_ENDPOINT"
    fi
}
render_config >/etc/stackinit/stackinit.toml.new
/usr/local/bin/stackinit check --config /etc/stackinit/stackinit.toml.new \
    || die "the rendered config does not pass 'stackinit check' (kept at /etc/stackinit/stackinit.toml.new)"
mv /etc/stackinit/stackinit.toml.new /etc/stackinit/stackinit.toml

# ---- kernel modules in the initramfs ----------------------------------------------------------------------
# As PID 1 there is no udev after boot, so nothing loads modules: the NICs (virtio_net here, ena on EC2), the
# disks (virtio_blk, nvme) and the power button (button + evdev: EC2 stop/terminate and QMP system_powerdown
# are an ACPI power-button press) must be loaded by the initramfs.
modules=(virtio_pci virtio_net virtio_blk virtio_scsi ena nvme button evdev ext4 af_packet)
conf=/etc/initramfs-tools/modules
touch $conf
for m in "${modules[@]}"; do
    grep -qx "$m" $conf || echo "$m" >>$conf
done
if [ "$MODE" = pid1 ]; then
    install -D -m 0755 "$SRC/image/initramfs-hook.sh" /etc/initramfs-tools/hooks/stackinit-dhcp
    install -D -m 0755 "$SRC/image/initramfs-dhcp.sh" /etc/initramfs-tools/scripts/init-bottom/stackinit-dhcp
else
    rm -f /etc/initramfs-tools/hooks/stackinit-dhcp /etc/initramfs-tools/scripts/init-bottom/stackinit-dhcp
fi
# The local image knows its hardware (QEMU's virtio): its initramfs carries only the modules above and their
# dependencies, not Debian's MODULES=most (50 MB unpacked, seconds to unpack and probe under emulation, for
# every boot mode alike). An AMI keeps the distro's default: instance types differ in what they need.
if [ "$CHROOT" = 1 ]; then
    for m in crc32c_generic xen_blkfront xen_netfront; do
        grep -qx "$m" $conf || echo "$m" >>$conf
    done
    echo "MODULES=list" >/etc/initramfs-tools/conf.d/stackinit-modules.conf
else
    rm -f /etc/initramfs-tools/conf.d/stackinit-modules.conf
fi
say "update-initramfs"
update-initramfs -u -k all >/dev/null 2>&1 || update-initramfs -c -k all >/dev/null

# ---- boot mode --------------------------------------------------------------------------------------------
grub_cfg=/etc/default/grub.d/90-stackinit.cfg
unit=/etc/systemd/system/stackinit.service
case "$MODE" in
    pid1)
        # With a read-only root, /etc/resolv.conf points at the lease's file in /run.
        if [ "$(readlink /etc/resolv.conf 2>/dev/null)" != /run/resolv.conf ]; then
            rm -f /etc/resolv.conf
            ln -s /run/resolv.conf /etc/resolv.conf
        fi
        rm -f $unit /etc/systemd/system/multi-user.target.wants/stackinit.service
        if [ "$CHROOT" != 1 ] && command -v update-grub >/dev/null; then
            mkdir -p /etc/default/grub.d
            cat >$grub_cfg <<'EOF'
# stackinit is the init of this image (image/install.sh --mode pid1).
GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX init=/usr/local/bin/stackinit"
# Ubuntu cloud images first try to boot without an initramfs (40-force-partuuid.cfg); ours is needed:
# it loads the NIC, disk and power-button modules and takes the first DHCP lease.
GRUB_FORCE_PARTUUID=
EOF
            update-grub
        fi
        echo "init=/usr/local/bin/stackinit" >/etc/stackinit/kernel-cmdline
        ;;
    systemd|seed)
        if [ -f $grub_cfg ]; then
            rm -f $grub_cfg
            [ "$CHROOT" != 1 ] && command -v update-grub >/dev/null && update-grub
        fi
        echo "" >/etc/stackinit/kernel-cmdline
        if [ "$CHROOT" = 1 ]; then
            # A bare debootstrapped root has no network config: systemd-networkd takes DHCP on any NIC.
            mkdir -p /etc/systemd/network
            printf '[Match]\nName=en* eth*\n\n[Network]\nDHCP=ipv4\n' >/etc/systemd/network/50-dhcp.network
            systemctl enable systemd-networkd >/dev/null 2>&1
            # The serial console is the only one a local VM has; no login prompt needed to boot.
            systemctl mask serial-getty@ttyS0.service getty@tty1.service >/dev/null 2>&1 || true
        fi
        if [ "$MODE" = systemd ]; then
            [ -f "$SRC/systemd/stackinit.service" ] || die "missing $SRC/systemd/stackinit.service"
            install -D -m 0644 "$SRC/systemd/stackinit.service" $unit
            if [ "$CHROOT" = 1 ]; then
                # Local images boot under QEMU TCG, where the app alone can take minutes to load: systemd's
                # start timeout (READY=1 comes once every service is ready) would kill and restart the stack.
                mkdir -p /etc/systemd/system/stackinit.service.d
                printf '[Service]\nTimeoutStartSec=30min\n' >/etc/systemd/system/stackinit.service.d/emulated.conf
            fi
            systemctl enable stackinit.service >/dev/null 2>&1
            [ "$CHROOT" = 1 ] || systemctl restart stackinit.service
        else
            rm -f $unit /etc/systemd/system/multi-user.target.wants/stackinit.service
            install -D -m 0644 "$SRC/image/seed/supervisor.conf" /etc/supervisor/conf.d/app.conf
            install -D -m 0644 "$SRC/image/seed/nginx.conf" /etc/nginx/sites-available/default
            ln -sf /etc/nginx/sites-available/default /etc/nginx/sites-enabled/default
            systemctl enable nginx supervisor >/dev/null 2>&1
        fi
        ;;
esac

if [ "$CHROOT" = 1 ]; then
    # Nothing per host: no machine id, no host keys, no apt lists in the image. (openssh-server's postinst
    # made host keys in the base tree; every clone would share them.)
    if [ "$MODE" = pid1 ]; then
        rm -f $STATE/machine-id # /etc/machine-id links there; firstboot makes it
    else
        : >/etc/machine-id # systemd makes one at first boot
        # Debian's ssh.service expects keys from the package's postinst: make them at first start instead,
        # ed25519 and ECDSA as in pid1 mode (RSA would take the single vCPU for most of a minute under TCG).
        mkdir -p /etc/systemd/system/ssh.service.d
        cat >/etc/systemd/system/ssh.service.d/stackinit-host-keys.conf <<'EOF'
[Service]
ExecStartPre=
ExecStartPre=/bin/sh -c 'for t in ed25519 ecdsa; do [ -f /etc/ssh/ssh_host_$${t}_key ] || ssh-keygen -q -t $$t -N "" -f /etc/ssh/ssh_host_$${t}_key; done'
ExecStartPre=/usr/sbin/sshd -t
EOF
    fi
    rm -f /etc/ssh/ssh_host_*
    # Nor a random seed that every clone would start from.
    rm -f /var/lib/dbus/machine-id /var/lib/systemd/random-seed
    apt-get clean
    rm -rf /var/lib/apt/lists/* /tmp/* /var/tmp/*
fi
say "done: mode $MODE, $(/usr/local/bin/stackinit --version 2>/dev/null || echo stackinit)"

# shellcheck shell=bash
# The app manifest: what image/install.sh needs to know about the WSGI app it bakes, read from
# APP_DIR/stackinit-app.env (KEY=VALUE lines, `#` comments; nothing is executed). Sourced by install.sh and
# build-local.sh; `read_app_manifest DIR` sets:
#   APP_WSGI          module:callable of the WSGI app                        (required)
#   APP_SETTINGS      Django settings module; empty for a plain WSGI app      (no migrate, no collectstatic)
#   APP_REQUIREMENTS  pip requirements file, relative to the app directory     (default requirements.txt)
#   APP_PYTHONPATH    directory, relative to the app, that holds the packages  (default ., e.g. src)
#   APP_STATIC        directory, relative to the app, served at /static/ as it is (default: Django's
#                     collectstatic output when APP_SETTINGS is set, else none)
#   APP_REPLICAS      worker processes, forked from one template              (default 3)
# An app without stackinit-app.env must bring its own stackinit.toml (the sample app has both).

read_app_manifest() {
    local dir=$1 file=$1/stackinit-app.env line key value n=0
    APP_WSGI="" APP_SETTINGS="" APP_REQUIREMENTS=requirements.txt APP_PYTHONPATH=. APP_STATIC="" APP_REPLICAS=3
    [ -f "$file" ] || return 0
    while IFS= read -r line || [ -n "$line" ]; do
        n=$((n + 1))
        line=${line%%#*}
        line=${line%"${line##*[![:space:]]}"}
        [ -n "${line//[[:space:]]/}" ] || continue
        key=${line%%=*}
        value=${line#*=}
        [ "$key" != "$line" ] || manifest_error "$file:$n: not KEY=VALUE: $line"
        case "$key" in
            WSGI) APP_WSGI=$value ;;
            DJANGO_SETTINGS) APP_SETTINGS=$value ;;
            REQUIREMENTS) APP_REQUIREMENTS=$value ;;
            PYTHONPATH) APP_PYTHONPATH=$value ;;
            STATIC) APP_STATIC=$value ;;
            REPLICAS) APP_REPLICAS=$value ;;
            *) manifest_error "$file:$n: unknown key $key (WSGI, DJANGO_SETTINGS, REQUIREMENTS, PYTHONPATH, STATIC, REPLICAS)" ;;
        esac
    done <"$file"
    [[ $APP_WSGI =~ ^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$ ]] ||
        manifest_error "$file: WSGI must be module:callable, not '$APP_WSGI'"
    [ -z "$APP_SETTINGS" ] || [[ $APP_SETTINGS =~ ^[A-Za-z_][A-Za-z0-9_.]*$ ]] ||
        manifest_error "$file: DJANGO_SETTINGS must be a module name, not '$APP_SETTINGS'"
    [[ $APP_REPLICAS =~ ^[1-9][0-9]{0,2}$ ]] || manifest_error "$file: REPLICAS must be 1 to 999, not '$APP_REPLICAS'"
    local rel
    for rel in "$APP_REQUIREMENTS" "$APP_PYTHONPATH" "$APP_STATIC"; do
        case "/$rel/" in */../*) manifest_error "$file: '$rel' leaves the app directory" ;; esac
        case "$rel" in /*) manifest_error "$file: '$rel' must be relative to the app directory" ;; esac
    done
    [ -f "$dir/$APP_REQUIREMENTS" ] || manifest_error "$file: no requirements file $dir/$APP_REQUIREMENTS"
    [ -d "$dir/$APP_PYTHONPATH" ] || manifest_error "$file: no directory $dir/$APP_PYTHONPATH (PYTHONPATH)"
    [ -z "$APP_STATIC" ] || [ -d "$dir/$APP_STATIC" ] || manifest_error "$file: no directory $dir/$APP_STATIC (STATIC)"
}

manifest_error() {
    printf 'app manifest: %s\n' "$*" >&2
    exit 1
}

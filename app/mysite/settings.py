"""Settings of the sample app that stackinit serves.

Nothing here is host-specific, so one image serves every instance cloned from it:

- ALLOWED_HOSTS comes from STACKINIT_ALLOWED_HOSTS (comma separated), which stackinit fills at boot with
  the instance's own names and IPs from the instance metadata, plus localhost for probes. It is never
  `'*'`: a `*` in the variable is dropped with a warning.
- SECRET_KEY comes from DJANGO_SECRET_KEY. Without it a random key is generated when this module is
  imported: fine for this stateless page, but every process (each replica) then has its own key and
  the key changes on every restart, so signed data (sessions, CSRF tokens, password reset links) does
  not survive a restart or cross replicas. A real app must set DJANGO_SECRET_KEY.
- Paths come from STACKINIT_DB_PATH (the sqlite file) and STACKINIT_STATIC_ROOT (where collectstatic
  puts the files that the stackinit proxy serves under /static/).
"""
import os
import secrets
import sys
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent


def _allowed_hosts(raw):
    hosts = ["localhost", "127.0.0.1", "[::1]"]
    for item in raw.split(","):
        host = item.strip()
        if not host:
            continue
        if host == "*":
            print("mysite.settings: ignoring '*' in STACKINIT_ALLOWED_HOSTS", file=sys.stderr)
            continue
        # Django wants IPv6 literals in brackets, as they appear in a Host header.
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        if host not in hosts:
            hosts.append(host)
    return hosts


ALLOWED_HOSTS = _allowed_hosts(os.environ.get("STACKINIT_ALLOWED_HOSTS", ""))

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or secrets.token_urlsafe(50)

DEBUG = False

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.staticfiles",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "mysite.urls"
WSGI_APPLICATION = "mysite.wsgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("STACKINIT_DB_PATH", "/srv/app/db.sqlite3"),
    }
}

# Django is reachable only through the stackinit proxy (a unix socket), which sets X-Forwarded-Proto.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = os.environ.get("STACKINIT_STATIC_ROOT", "/srv/app/staticfiles")

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Errors (and DisallowedHost) go to stderr, which stackinit writes to the service's log file.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": sys.stderr}},
    "root": {"handlers": ["stderr"], "level": "WARNING"},
}

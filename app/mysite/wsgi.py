"""WSGI entry point: `mysite.wsgi:application` (for stackinit_wsgi.py or gunicorn)."""
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

application = get_wsgi_application()

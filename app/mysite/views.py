"""The sample app's pages: a hello page that says which replica served it, and a slow page for benchmarks."""
import os
import time

from django.http import HttpResponse, JsonResponse
from django.middleware.csrf import get_token
from django.templatetags.static import static
from django.utils.html import format_html

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>stackinit sample app</title>
<link rel="stylesheet" href="{}">
</head>
<body>
<h1>Hello from Django</h1>
<p>Host: <code class="host">{}</code></p>
<p>Replica: <code class="replica">{}</code></p>
<p>Process: <code class="pid">{}</code></p>
</body>
</html>
"""


def index(request):
    # get_host() has passed ALLOWED_HOSTS validation by now (else Django answered 400).
    body = format_html(
        PAGE,
        static("style.css"),
        request.get_host(),
        os.environ.get("STACKINIT_REPLICA", "-"),
        os.getpid(),
    )
    return HttpResponse(body)


# Upper bound so a stray request cannot park a sync worker for long.
MAX_SLOW_MS = 1000


def slow(request):
    """Sleep `?ms=N` milliseconds (default 50, at most 1000): the slow requests of the replica benchmarks."""
    try:
        ms = int(request.GET.get("ms", "50"))
    except ValueError:
        return HttpResponse("ms must be an integer\n", status=400, content_type="text/plain")
    ms = max(0, min(ms, MAX_SLOW_MS))
    time.sleep(ms / 1000)
    return HttpResponse(f"slept {ms} ms\n", content_type="text/plain")


def whoami(request):
    """What Django makes of the request: the client, the scheme, the Host. Behind a load balancer that stackinit
    trusts (`[proxy] trusted_proxies`), `secure` is the scheme the client used at the load balancer. A GET sets
    the CSRF cookie; a POST answers only once Django's CSRF checks (Origin against `https://` + Host when
    secure, then the token) have passed."""
    return JsonResponse(
        {
            "method": request.method,
            "secure": request.is_secure(),
            "host": request.get_host(),
            "client": request.META.get("HTTP_X_REAL_IP", ""),
            "csrf_token": get_token(request),
        }
    )

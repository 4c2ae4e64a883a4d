"""Settings every gunicorn of this app shares. gunicorn reads ./gunicorn.conf.py from its working directory
(/srv/app), so the seed stack's `gunicorn --workers 3` and stackinit's per-replica gunicorns both get them."""
import gc


def post_worker_init(worker):
    """The app is loaded and no request is being served yet: collect once, then freeze what is left.

    Frozen objects move to the permanent generation, which no collection scans. Without this, each worker's
    first full collections traverse Django's whole import-time heap (30-40 ms each, measured on the bench),
    and the requests routed to that worker wait through them.
    """
    gc.collect()
    gc.freeze()

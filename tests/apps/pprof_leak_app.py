"""The pprof test app plus ``/leak?kb=N``: N KiB kept for ever, allocated at one known line (the one
marked ``LEAK SITE``), so that a heap profile taken later must still show it."""
from tests.apps.pprof_app import api, app  # noqa: F401 (app: what gunicorn serves)

LEAKED: list = []


def leak(kb: int) -> None:
    LEAKED.append(bytearray(kb * 1024))  # LEAK SITE


class Leak:
    def on_get(self, req, resp):
        leak(req.get_param_as_int("kb", default=256, min_value=1, max_value=4096))
        resp.media = {"leaked": len(LEAKED)}


api.add_route("/leak", Leak())

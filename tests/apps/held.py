"""A test app: the example's routes plus ``/held``, which reports how its own connection is held while
the app runs (``MetricsMiddleware``'s hold: TCP_CORK and SO_LINGER 0 until the count is stored), and
whether the worker's listening sockets hold (a sync worker's connections are then held from their accept)."""
import socket
import struct

from examples.app import create_app
from rockstar_mp.worker import wsgi
from rockstar_mp.worker.accelerator import hotpath


class Held:
    def on_get(self, req, resp):
        sock = req.env["gunicorn.socket"]
        resp.media = {"cork": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK),
                      "linger": list(struct.unpack("ii", sock.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8))),
                      "listeners": hotpath.listeners_held() if hotpath is not None else None}


api = create_app()
api.add_route("/held", Held())
app = wsgi.MetricsMiddleware(api, workload=True)

"""The Flask example: the routes of ``examples/app.py``'s Falcon app, with monitoring on.

    gunicorn -c gunicorn_conf.py examples.flask_app:app

Routes: ``/`` hello, ``/users/<name>`` greets (a slug), ``/orders/<int:order_id>`` shows an order (a number),
``/error`` raises (Flask answers 500 and logs the traceback). ``instrument`` names each request's route with
Flask's rule (``/users/<name>``, ``<unmatched>`` for a 404) and counts ``http.requests`` once the response
has been handed to gunicorn; the tenant of a workload record is the ``X-Tenant-ID`` header.
"""
from flask import Flask

from rockstar_mp.integrations.flask import instrument

app = Flask(__name__)


@app.get("/")
def hello():
    return {"hello": "rockstar-mp"}


@app.get("/users/<name>")
def user(name: str):
    return {"hello": name}


@app.get("/orders/<int:order_id>")
def order(order_id: int):
    return {"order": order_id}


@app.get("/error")
def error():
    raise RuntimeError("this view always fails (by design)")


instrument(app, tenant_header="X-Tenant-ID")

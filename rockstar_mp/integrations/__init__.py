"""Framework integrations: request monitoring with the framework's own route templates.

Each module imports its framework only when it is imported itself (``import rockstar_mp`` loads none):

* ``rockstar_mp.integrations.flask``: ``instrument(app)`` for a Flask app.
* ``rockstar_mp.integrations.django``: ``RockstarMiddleware`` for ``MIDDLEWARE`` and ``instrument(application)``
  for the WSGI application.

Falcon has its own middleware, ``rockstar_mp.worker.falcon.WorkloadMiddleware``. Recipes for every worker
class: ``docs/integrations.md``.
"""

"""Framework integrations: request monitoring with the framework's own route templates, and pre-fork
servers other than gunicorn.

Each module imports its framework only when it is imported itself (``import rockstar_mp`` loads none):

* ``rockstar_mp.integrations.flask``: ``instrument(app)`` for a Flask app.
* ``rockstar_mp.integrations.django``: ``RockstarMiddleware`` for ``MIDDLEWARE`` and ``instrument(application)``
  for the WSGI application.
* ``rockstar_mp.integrations.celery``: ``instrument(celery_app)`` for Celery's prefork pool (the manager in
  the parent, each pool process attached, ``celery.tasks{task,state}``).

Falcon has its own middleware, ``rockstar_mp.worker.falcon.WorkloadMiddleware``; ASGI apps (FastAPI,
Starlette) ``rockstar_mp.worker.asgi.MetricsMiddleware``. Recipes for every worker class:
``docs/integrations.md``.
"""

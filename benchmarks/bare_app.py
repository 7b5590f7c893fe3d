"""The example app's routes without rockstar-mp: the "off" side of figure 7 of ``benchmarks.run``.

    gunicorn -w 2 -b 127.0.0.1:8000 benchmarks.bare_app:app

The same Falcon resources as ``examples.app`` (imported from it, so both serve identical responses), in a
plain ``falcon.App()``, with no ``MetricsMiddleware`` around it. Importing
``examples.app`` declares its metrics in the process-local registry, but nothing binds them to a slab
and nothing records them: serving a request touches no rockstar-mp code.
"""
from examples.app import create_app

app = create_app()

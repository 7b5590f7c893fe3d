"""The Django example: a minimal project (no database) with the routes of the Flask example, monitored.

    gunicorn -c gunicorn_conf.py examples.django_site.wsgi:application

``settings.MIDDLEWARE`` starts with ``RockstarMiddleware`` (it names each request's route with Django's
pattern, ``/users/<slug:name>/``), and ``wsgi.py`` wraps the application with ``instrument``.
"""

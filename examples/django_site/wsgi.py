"""The example's WSGI application, monitored: ``gunicorn -c gunicorn_conf.py examples.django_site.wsgi:application``."""
import os

from django.core.wsgi import get_wsgi_application

from rockstar_mp.integrations.django import instrument

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_site.settings")

application = instrument(get_wsgi_application(), tenant_header="X-Tenant-ID")

"""Settings of the example project: the least Django needs to serve ``urls.py`` (no database, no apps)."""
SECRET_KEY = "example-only-not-secret"  # noqa: S105  (an example that serves no session or form)
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "examples.django_site.urls"
MIDDLEWARE = [
    "rockstar_mp.integrations.django.RockstarMiddleware",  # first: it sees every response
    "django.middleware.common.CommonMiddleware",
]
INSTALLED_APPS: list[str] = []
DATABASES: dict = {}
USE_TZ = True

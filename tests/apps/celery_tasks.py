"""A Celery app for the prefork test: ``celery -A tests.apps.celery_tasks worker``, on kombu's filesystem
transport (no broker server) in ``$CELERY_TEST_FOLDER``. ``square`` fails for multiples of 10; ``flaky``
retries once, then succeeds."""
from rockstar_mp import MonitoringConfig
from rockstar_mp.integrations.celery import instrument
from tests.apps.celery_broker import make_app

app = make_app()
instrument(app, MonitoringConfig(enable_metrics=True))


@app.task(name="square")
def square(i: int) -> int:
    if i % 10 == 0:
        raise ValueError(f"{i} is a multiple of 10")
    return i * i


@app.task(name="flaky", bind=True, max_retries=1)
def flaky(self, i: int) -> int:
    if self.request.retries == 0:
        raise self.retry(countdown=0)
    return i

"""The filesystem broker (kombu's ``filesystem://`` transport, no server) of the Celery test app, in
``$CELERY_TEST_FOLDER``: the worker's app and the test's publisher share it."""
import os

from celery import Celery


def make_app(folder: str | None = None) -> Celery:
    folder = folder or os.environ["CELERY_TEST_FOLDER"]
    app = Celery("rockstar_celery_test", broker="filesystem://")
    app.conf.update(broker_transport_options={"data_folder_in": folder, "data_folder_out": folder,
                                              "control_folder": os.path.join(folder, "control"),
                                              "store_processed": False, "polling_interval": 0.05},
                    task_ignore_result=True, broker_connection_retry_on_startup=True,
                    worker_hijack_root_logger=False)
    return app

"""The example's routes; ``RockstarMiddleware`` records them as written here, with a leading ``/``."""
from django.urls import path

from . import views

urlpatterns = [
    path("", views.hello),
    path("users/<slug:name>/", views.user),
    path("orders/<int:order_id>/", views.order),
    path("error/", views.error),
]

"""The example's views: the same answers as the Flask example's."""
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET


@require_GET
def hello(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"hello": "rockstar-mp"})


@require_GET
def user(request: HttpRequest, name: str) -> JsonResponse:
    return JsonResponse({"hello": name})


@require_GET
def order(request: HttpRequest, order_id: int) -> JsonResponse:
    return JsonResponse({"order": order_id})


@require_GET
def error(request: HttpRequest) -> JsonResponse:
    raise RuntimeError("this view always fails (by design)")

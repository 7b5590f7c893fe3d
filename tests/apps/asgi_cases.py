"""Serves generated requests through the ASGI ``MetricsMiddleware(workload=True)`` on a real event loop, in a
process attached to a fresh segment, and prints (JSON) what the server saw and what landed in the slab.
tests/test_asgi_paths_agree.py runs it with the C path and with the Python one (``ROCKSTAR_PURE_PYTHON=1``)
on the same cases, and compares (and checks what each case must count).

    python -m tests.apps.asgi_cases <segment dir> <cases file>

A case is a dict: ``type`` (http or websocket), ``scope`` (method, path, headers, root_path: the keys given),
``route`` (what a router puts in the scope: ``ROUTES``), ``app`` (``APPS``), ``status``, ``chunks`` and
``fail_at`` (the message whose server ``send`` raises, as for a client gone; -1: none).
"""
import asyncio

from rockstar_mp.worker.asgi import MetricsMiddleware
from tests.apps.request_cases import run_cases


class AppError(Exception):
    pass


class ClientGone(OSError):
    pass


class Route:  # what Starlette's router puts in scope["route"]
    def __init__(self, path_format=None, path=None):
        if path_format is not None:
            self.path_format = path_format
        if path is not None:
            self.path = path


class Mount(Route):
    routes: list = []


class Effective:  # FastAPI's effective route context
    def __init__(self, path_format):
        self.path_format = path_format


def _routed(scope: dict, how: str) -> None:
    """What a router does to the scope as it matches (``ROUTES``)."""
    if how == "route":
        scope["route"] = Route("/items/{item_id}")
    elif how == "path_only":
        scope["route"] = Route(path="/users/{name}")
    elif how == "no_template":
        scope["route"] = Route(path_format="")
    elif how == "mount":
        scope["route"] = Mount("/static")
    elif how == "fastapi":
        scope["route"] = Route("/items/{item_id}")
        scope["fastapi"] = {"effective_route_context": Effective("/v1/items/{item_id}")}
    elif how == "mounted":
        scope["route"] = Route("/repos/{repo}")
        scope["root_path"] = scope.get("root_path", "") + "/orgs/acme"
        scope["path_params"] = {"org": "acme", "repo": "x"}
    elif how == "unmatched":
        scope["router"] = object()


ROUTES = ["none", "route", "path_only", "no_template", "mount", "fastapi", "mounted", "unmatched"]


async def _http_app(scope, receive, send, case):
    _routed(scope, case["route"])
    app, status, chunks = case["app"], case["status"], case["chunks"]
    if app == "raise_before":
        raise AppError("before the response")
    if app == "no_response":
        return
    if app == "cancel_before":
        await asyncio.Event().wait()  # until the server cancels it
    await send({"type": "http.response.start", "status": status, "headers": []})
    if app == "raise_after":
        raise AppError("after the start")
    if app in ("cancel_after", "close_after", "drop_after"):
        await asyncio.Event().wait()  # until the server cancels, closes or drops it
    last = app in ("complete", "twice")
    for k, chunk in enumerate(chunks):
        await send({"type": "http.response.body", "body": chunk, "more_body": not (last and k == len(chunks) - 1)})
    if app == "disconnect":
        message = await receive()
        assert message["type"] == "http.disconnect"
        return  # a streaming response gives up: the client is gone
    if last and not chunks:
        await send({"type": "http.response.body"})
    if app == "twice":  # a body after the last one: counted once
        await send({"type": "http.response.body", "body": b"late", "more_body": False})


async def _websocket_app(scope, receive, send, case):
    assert (await receive())["type"] == "websocket.connect"
    if case["app"] == "ws_raise":
        raise AppError("before accepting")
    if case["app"] == "ws_deny":
        await send({"type": "websocket.close", "code": 1008})
        return
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": "hello"})
    await send({"type": "websocket.close", "code": 1000})


async def dispatch(scope, receive, send):
    case = CURRENT["case"]
    if scope["type"] == "websocket":
        return await _websocket_app(scope, receive, send, case)
    return await _http_app(scope, receive, send, case)


CURRENT: dict = {}


async def serve(app, case: dict) -> list:
    """One request as an ASGI server makes it: what the server saw (message types, exceptions)."""
    outcome: list = []
    received = [{"type": "http.request", "body": b"", "more_body": False}, {"type": "http.disconnect"}]
    if case["type"] == "websocket":
        received = [{"type": "websocket.connect"}]

    async def receive():
        return received.pop(0) if received else await asyncio.Event().wait()

    async def send(message):
        if len(outcome) == case["fail_at"]:
            raise ClientGone("the client is gone")
        outcome.append(message["type"])

    CURRENT["case"] = case
    scope = {"type": case["type"], "asgi": {"version": "3.0"}, **case["scope"]}
    if case["app"] in ("close_after", "drop_after"):
        return _close_or_drop(app, scope, receive, send, case["app"], outcome)
    task = asyncio.ensure_future(app(scope, receive, send))
    if case["app"].startswith("cancel"):
        while not task.done() and not (outcome or case["app"] == "cancel_before"):
            await asyncio.sleep(0)
        await asyncio.sleep(0)
        task.cancel()  # the server gives up on the app (its client went away)
    try:
        await task
    except BaseException as exc:  # noqa: BLE001 - what is raised is part of the outcome compared
        outcome.append(f"raised {type(exc).__name__}")
    return outcome


def _close_or_drop(app, scope, receive, send, how: str, outcome: list) -> list:
    """The app runs until it waits after its response's start; then the server's coroutine that awaits
    it is closed (``close_after``: the close reaches the app's awaitable through the await), or the app's
    awaitable is dropped (``drop_after``: its finalizer closes it, as for a coroutine a server lost)."""

    async def server_side():
        await app(scope, receive, send)

    awaiting = server_side() if how == "close_after" else app(scope, receive, send)
    try:
        awaiting.send(None)  # what it yields (the app's wait) is not the loop's business here
    except BaseException as exc:  # noqa: BLE001 - a server send that raised: part of the outcome compared
        outcome.append(f"raised {type(exc).__name__}")
        return outcome
    if how == "close_after":
        awaiting.close()
    del awaiting
    outcome.append(how)
    return outcome


def serve_all(cases: list) -> list:
    app = MetricsMiddleware(dispatch, workload=True)  # once the worker is attached, as an app's is
    loop = asyncio.new_event_loop()
    return [loop.run_until_complete(serve(app, case)) for case in cases]


def main() -> None:
    run_cases(serve_all)


if __name__ == "__main__":
    main()

"""The example ASGI app: FastAPI with rockstar-mp's ASGI ``MetricsMiddleware`` around it.

    gunicorn -c gunicorn_conf.py -k uvicorn.workers.UvicornWorker examples.fastapi_app:app
    gunicorn -c gunicorn_conf.py -k asgi examples.fastapi_app:app        # gunicorn's own ASGI worker

Routes: ``/`` hello, ``/items/{item_id}`` (an int), ``/v1/users/{name}`` (an included router),
``/work?ms=N`` burns N ms of CPU in the event loop's thread, ``/sleep?ms=N`` awaits, ``/stream?chunks=N``
streams N chunks, ``/fail`` raises (a 500). Workload records carry the route templates, the tenant from
``X-Tenant-ID`` and the request id from ``X-Request-ID``; ``http.requests`` counts every response.
"""
import asyncio
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, FastAPI, Query
from fastapi.responses import StreamingResponse

from rockstar_mp.worker.asgi import MetricsMiddleware

MAX_MS = 10_000


class RouteFailed(RuntimeError):
    """What ``/fail`` raises (the tests look for its name in the server's log)."""


def burn_cpu(ms: int) -> int:
    """Spin for ``ms`` milliseconds of CPU time (the profiling tests look for this function)."""
    deadline = time.process_time() + ms / 1000.0
    n = 0
    while time.process_time() < deadline:
        n += sum(i * i for i in range(200))
    return n


api = FastAPI()
v1 = APIRouter(prefix="/v1")


@api.get("/")
async def hello() -> dict:
    return {"hello": "rockstar-mp"}


@api.get("/items/{item_id}")
async def item(item_id: int) -> dict:
    return {"item": item_id}


@v1.get("/users/{name}")
async def user(name: str) -> dict:
    return {"hello": name}


@api.get("/work")
async def work(ms: int = Query(10, ge=0, le=MAX_MS)) -> dict:
    burn_cpu(ms)  # on purpose in the event loop's thread: what a CPU profile of the worker shows
    return {"worked_ms": ms}


@api.get("/sleep")
async def sleep(ms: int = Query(10, ge=0, le=MAX_MS)) -> dict:
    await asyncio.sleep(ms / 1000.0)
    return {"slept_ms": ms}


@api.get("/stream")
async def stream(chunks: int = Query(3, ge=0, le=1000), ms: int = Query(0, ge=0, le=MAX_MS)) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        for i in range(chunks):
            if ms:
                await asyncio.sleep(ms / 1000.0)
            yield b"chunk %d\n" % i
    return StreamingResponse(body(), media_type="text/plain")


@api.get("/fail")
async def fail() -> dict:
    raise RouteFailed("this route always fails (by design)")


api.include_router(v1)
app = MetricsMiddleware(api)

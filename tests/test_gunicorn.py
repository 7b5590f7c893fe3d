"""Real gunicorn masters and workers: exact merged counts across restarts, kills and signals."""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import ssl
import struct
import threading
import urllib.request

import psutil
import pytest

from rockstar_mp.worker import hold
from rockstar_mp.worker.accelerator import PURE_PYTHON_ENV
from tests.helpers import limit, load, poll, raw_get


def _received(counts: dict) -> int:
    return sum(n for status, n in counts.items() if status)


def test_exact_total_across_max_requests_restarts(gunicorn_factory):
    server = gunicorn_factory(workers=4, args=("--max-requests", "50"))
    [segment] = server.segment_files()
    size_before = segment.stat().st_size
    first_workers = set(server.worker_pids())

    counts = load(server.port, 2000, concurrency=16)

    assert counts.get(200) == 2000, counts
    server.wait_total(2000)
    data = server.metrics()
    assert data["counters"]['http.requests{method="GET",status="200",route="/"}'] == 2000
    assert data["histograms"]['http.request.duration.seconds{method="GET",route="/"}']["count"] == 2000
    # dead workers were folded, not dropped; the last ones' counts are merged before their fold (next tick)
    poll(lambda: server.metrics()["system"]["workers_folded"] >= 2000 // 50 - 4, message="the exited workers folded")
    assert not first_workers & set(server.worker_pids())
    assert segment.stat().st_size == size_before
    assert server.segment_files() == [segment]


@pytest.mark.parametrize("path", ["c", "python"])
def test_nothing_lost_while_workers_are_sigkilled(gunicorn_factory, path):
    """Every response a client received is counted, while workers die by SIGKILL every 200 ms; with the
    C request path and with the Python one (``ROCKSTAR_PURE_PYTHON=1``).

    Without MetricsMiddleware's hold (the response corked until the count is stored) this failed
    about one run in five: the send woke the client, and the killer ran before the worker counted."""
    env = {"ROCKSTAR_PURE_PYTHON": "1"} if path == "python" else {"ROCKSTAR_PURE_PYTHON": ""}
    server = gunicorn_factory(workers=4, args=("--max-requests", "50"), env=env)
    aggregator = server.metrics()["system"]["aggregator_pid"]
    stop = threading.Event()
    kills = []

    def killer():
        while not stop.wait(0.2):
            pids = server.worker_pids()
            if pids:
                victim = random.choice(pids)
                try:
                    os.kill(victim, signal.SIGKILL)
                    kills.append(victim)
                except ProcessLookupError:
                    pass

    thread = threading.Thread(target=killer)
    thread.start()
    try:
        counts = load(server.port, 2000, concurrency=16)
    finally:
        stop.set()
        thread.join()

    received = _received(counts)
    assert len(kills) >= 3, kills
    assert received > 1000, counts
    poll(lambda: len(server.worker_pids()) == 4, timeout=10, message="workers respawned")
    server.wait_total(received)
    data = server.metrics()
    assert data["system"]["aggregator_pid"] == aggregator  # it never crashed
    log = server.log_text()
    assert "Traceback" not in log, log[log.find("Traceback") - 300:][:4000]


def test_aggregator_sigkill_is_restarted_with_totals(gunicorn_factory):
    server = gunicorn_factory(workers=2)
    load(server.port, 200)
    server.wait_total(200)
    old = server.metrics()["system"]["aggregator_pid"]

    os.kill(old, signal.SIGKILL)
    # The poll's deadline is the bound: restart delay 0.2 s plus a fresh interpreter's start (0.6 s idle
    # here, 2.8 s once in a loaded CI run); how fast is the figure's business, not an assertion's.
    data = poll(lambda: (d := server.metrics())["system"]["aggregator_pid"] != old and d,
                timeout=limit(5), interval=0.02, message="a new aggregator serving")
    assert data["counters"]["http.requests"] == 200
    assert data["system"]["aggregator_starts"] == 2
    assert server.aggregator_pids() == [data["system"]["aggregator_pid"]]


def test_master_sigkill_leaves_no_process(gunicorn_factory):
    server = gunicorn_factory(workers=2)
    leftovers = server.aggregator_pids() + server.worker_pids()
    assert len(leftovers) == 3

    server.signal(signal.SIGKILL)
    poll(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                         for p in leftovers), timeout=limit(5), interval=0.02,
         message="aggregator and workers gone")


def test_master_sigterm_exits_cleanly_and_removes_segment(gunicorn_factory):
    server = gunicorn_factory(workers=2)
    aggregators = server.aggregator_pids()
    assert len(aggregators) == 1 and server.segment_files()

    server.signal(signal.SIGTERM)
    assert server.proc.wait(timeout=15) == 0
    assert server.segment_files() == []
    assert not any(psutil.pid_exists(p) for p in aggregators)


def test_hup_keeps_one_aggregator_and_the_totals(gunicorn_factory):
    server = gunicorn_factory(workers=2)
    load(server.port, 300)
    server.wait_total(300)
    aggregator = server.aggregator_pids()
    old_workers = set(server.worker_pids())

    server.signal(signal.SIGHUP)
    poll(lambda: len(server.worker_pids()) == 2 and not old_workers & set(server.worker_pids()),
         timeout=15, message="workers replaced after HUP")
    load(server.port, 200)

    server.wait_total(500)
    assert server.aggregator_pids() == aggregator
    assert len(server.segment_files()) == 1


def _listeners(port: int) -> set[int]:
    return {c.pid for c in psutil.net_connections("tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port and c.pid}


def test_usr2_never_two_aggregators_on_one_segment(gunicorn_factory):
    server = gunicorn_factory(workers=2)
    load(server.port, 100)
    server.wait_total(100)
    [segment] = server.segment_files()
    old_aggregator = server.aggregator_pids()

    server.signal(signal.SIGUSR2)
    # The new master is the old one's only child with children of its own.
    new_master = poll(lambda: [p.pid for p in server.children() if p.children()],
                      timeout=15, message="the USR2 master")[0]
    poll(lambda: len(server.worker_pids(new_master)) == 2, timeout=15, message="new master's workers")
    poll(lambda: len(server.aggregator_pids()) == 2, timeout=10, message="standby aggregator started")
    # Both masters share the segment, but only one aggregator serves it.
    assert server.segment_files() == [segment]
    assert _listeners(server.metrics_port) == set(old_aggregator)
    load(server.port, 100)

    server.signal(signal.SIGTERM)  # retire the old master; the new one carries on
    server.proc.wait(timeout=15)
    poll(lambda: len(server.aggregator_pids()) == 1 and server.aggregator_pids() != old_aggregator,
         timeout=10, message="the standby aggregator taking over")
    assert server.segment_files() == [segment]
    load(server.port, 100)
    server.wait_total(300)

    os.kill(new_master, signal.SIGTERM)
    poll(lambda: not psutil.pid_exists(new_master) or
         psutil.Process(new_master).status() == psutil.STATUS_ZOMBIE, timeout=15,
         message="the new master exiting")
    poll(lambda: server.segment_files() == [], timeout=5, message="segment removed by the last master")


def test_gthread_increments_are_exact(gunicorn_factory):
    """8 threads x 20,000 increments of one counter in one gthread worker merge to exactly 160,000
    (the app forces a thread switch every microsecond)."""
    server = gunicorn_factory(workers=1, app="tests.apps.hammer:app",
                              args=("--threads", "8", "--worker-class", "gthread"))
    counts = load(server.port, 8, path="/?n=20000", concurrency=8)
    assert counts == {200: 8}
    server.wait_total(160_000, name="test.hammer")


def test_preloaded_app_declares_metrics_before_fork(gunicorn_factory):
    """With --preload the app (and its metrics) is imported in the master; each worker moves them
    into its own slab after fork."""
    server = gunicorn_factory(workers=2, args=("--preload", "--max-requests", "40"))
    counts = load(server.port, 300)
    assert counts == {200: 300}
    server.wait_total(300)


def test_ttin_and_ttou_change_the_workers_seen(gunicorn_factory):
    server = gunicorn_factory(workers=2)
    load(server.port, 100)
    server.signal(signal.SIGTTIN)
    poll(lambda: server.metrics()["system"]["workers_live"] == 3, timeout=10, message="3 workers")
    load(server.port, 100)
    server.signal(signal.SIGTTOU)
    poll(lambda: server.metrics()["system"]["workers_live"] == 2, timeout=10, message="2 workers")
    server.wait_total(200)
    poll(lambda: server.metrics()["system"]["workers_folded"] == 1, timeout=5, message="one fold")


@pytest.mark.parametrize("worker_class", ["sync", "gthread"])
def test_responses_are_held_and_gunicorns_own_answers_still_arrive(gunicorn_factory, worker_class):
    """The app runs held (corked, SO_LINGER 0), with sync and gthread workers, and a response gunicorn
    writes itself (400 for a malformed request, before any app) reaches the client whole."""
    args = ("-k", worker_class) + (("--threads", "2") if worker_class == "gthread" else ())
    server = gunicorn_factory(workers=1, args=args, app="tests.apps.held:app")
    for _ in range(2):  # the first held request holds a sync worker's listeners: the second's connection inherits
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/held", timeout=10) as resp:
            held = json.loads(resp.read())
        assert {name: held[name] for name in ("cork", "linger")} == {"cork": 1, "linger": [1, 0]}
    assert held["listeners"] == (worker_class == "sync" if os.environ.get(PURE_PYTHON_ENV) != "1" else None)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"NOT A REQUEST LINE\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 400"), data[:200]
    assert raw_get(server.port, "/") == 200
    server.wait_total(3)  # /held twice and / (gunicorn's own 400 never reached the app)


def test_released_listeners_are_plain_again_and_others_untouched():
    """The master undoes a sync worker's listener hold (USR2, exit): a held listener gets its cork and
    linger back; one we did not hold (another linger set by the user) is left as it is."""
    held, own = socket.socket(), socket.socket()
    try:
        for sock, linger in ((held, (1, 0)), (own, (1, 5))):
            sock.bind(("127.0.0.1", 0))
            sock.listen()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", *linger))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        hold.release_listeners([held, own])
        state = {name: (sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK),
                        struct.unpack("ii", sock.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8)))
                 for name, sock in (("held", held), ("own", own))}
        assert state == {"held": (0, (0, 0)), "own": (1, (1, 5))}
    finally:
        held.close()
        own.close()


def _self_signed(directory) -> tuple:
    """A key and a self-signed certificate for 127.0.0.1, as PEM files: ``(key path, cert path)``."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    key_path, cert_path = directory / "key.pem", directory / "cert.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def test_a_tls_sync_worker_holds_each_connection_not_its_listeners(gunicorn_factory, tmp_path):
    """With ``certfile`` the listeners are not held: a corked listener would hold the TLS handshake's
    messages for the cork's 200 ms. Each request is still held (cork and linger while the app runs)."""
    key, cert = _self_signed(tmp_path)
    server = gunicorn_factory(workers=1, args=("--certfile", str(cert), "--keyfile", str(key)),
                              app="tests.apps.held:app")
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    for _ in range(2):
        with urllib.request.urlopen(f"https://127.0.0.1:{server.port}/held", timeout=10, context=context) as resp:
            held = json.loads(resp.read())
        assert {name: held[name] for name in ("cork", "linger")} == {"cork": 1, "linger": [1, 0]}
    assert held["listeners"] is (False if os.environ.get(PURE_PYTHON_ENV) != "1" else None)
    server.wait_total(2)

"""A hostile host never takes the app down: a deleted segment file, a full /dev/shm, a failing hook.

Real gunicorn masters and workers; the tmpfs tests mount a real tmpfs (root only: under CI=true a
missing privilege fails the test instead of skipping it).
"""
from __future__ import annotations

import fcntl
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter as Tally
from pathlib import Path

import psutil
import pytest

from rockstar_mp.segment import Geometry, Segment
from rockstar_mp.segment.layout import Header
from tests.helpers import load, poll, raw_get

SMALL_GEOMETRY = {  # a slab of 344 KiB, shared regions of 432 KiB: 4 slabs fit in a 2 MiB tmpfs
    "ROCKSTAR_MAX_WORKERS": "16", "ROCKSTAR_SLAB_MAX_SERIES": "2048", "ROCKSTAR_SLAB_MAX_VALUES": "4096",
    "ROCKSTAR_RETIRED_MAX_SERIES": "1024", "ROCKSTAR_RETIRED_MAX_VALUES": "8192",
    "ROCKSTAR_RECORD_SLOTS": "64", "ROCKSTAR_LOG_SLOTS": "16",
}


@pytest.fixture
def tmpfs(tmp_path):
    """A fresh tmpfs of the asked size (``tmpfs("2m")``), unmounted after the test."""
    mounted = []

    def mount(size: str):
        if os.geteuid() != 0:
            if os.environ.get("CI") == "true":
                pytest.fail("mounting a tmpfs needs root")
            pytest.skip("mounting a tmpfs needs root")
        path = tmp_path / f"tmpfs{len(mounted)}"
        path.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True)
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _ok(counts: dict) -> int:
    assert set(counts) == {200}, counts
    return counts[200]


def test_segment_deleted_under_load_then_recycles_and_aggregator_kill(gunicorn_factory):
    """systemd's RemoveIPC / a tmp cleaner deletes the segment while requests flow; workers are
    recycled (max_requests) and the aggregator is SIGKILLed: every request is answered, the master
    lives, and /metrics comes back with every count."""
    server = gunicorn_factory(workers=2, args=("--max-requests", "25"))
    answered: list[dict] = []
    loader = threading.Thread(target=lambda: answered.append(load(server.port, 200, concurrency=4)))
    loader.start()
    poll(lambda: server.total() >= 20, message="load under way")
    (segment,) = server.segment_files()
    segment.unlink()
    loader.join()
    total = _ok(answered[0])
    poll(lambda: server.metrics()["system"]["segment_unlinked"] == 1, message="the deletion noticed")
    (aggregator,) = server.aggregator_pids()
    os.kill(aggregator, signal.SIGKILL)
    total += _ok(load(server.port, 100, concurrency=4))  # more recycles, while no aggregator runs
    assert server.proc.poll() is None, "the gunicorn master died"
    server.wait_total(total)
    system = server.metrics()["system"]
    assert system["aggregator_starts"] == 2 and system["workers_folded"] >= 300 // 25 - 2
    assert system["hook_failures"] == 0
    log = server.log_text()
    assert log.count("was deleted or replaced") == 1, log
    assert system["segment_unlinked"] == 1


def _served_by(port: int, n: int) -> Tally:
    """``n`` requests; a tally of (pid, monitored) from the bodies (the series-flood app)."""
    tally: Tally = Tally()
    for _ in range(n):
        status, body = _get_body(port)
        assert status == 200
        pid, monitored = body.split()
        tally[(int(pid), monitored == "1")] += 1
    return tally


def _get_body(port: int) -> tuple[int, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def test_small_tmpfs_refuses_slabs_instead_of_sigbus(gunicorn_factory, tmpfs):
    """8 workers on a 2 MiB tmpfs, each filling its catalogue on its first request: the slabs that
    cannot be reserved are refused and counted, their workers run unmonitored, no process gets
    SIGBUS, and every response of a monitored worker is counted."""
    shm = tmpfs("2m")
    server = gunicorn_factory(workers=8, app="tests.apps.series_flood:app", segment_dir=shm,
                              env=SMALL_GEOMETRY, monitored=False)
    poll(lambda: server.metrics()["system"]["workers_live"] >= 1, message="the aggregator serving")
    tally = _served_by(server.port, 2400)  # a worker's first request fills its catalogue
    monitored = {pid for pid, on in tally if on}
    unmonitored = {pid for pid, on in tally if not on}
    counted = sum(n for (pid, on), n in tally.items() if on)
    system = server.metrics()["system"]
    assert system["space_failures"] == len(unmonitored) > 0, (system, tally)
    assert system["workers_live"] == len(monitored) > 0
    server.wait_total(counted)
    assert server.metrics()["system"]["catalogue_full"] > 0  # the catalogues did fill up
    assert server.proc.poll() is None and len(server.worker_pids()) == 8
    log = server.log_text()
    assert "SIGBUS" not in log and "was sent" not in log, log
    assert "has room for" in log  # told at start, with what to change
    assert log.count("is not monitored") == 1  # each refused slab counted, the reason logged once
    assert system["aggregator_starts"] == 1


def test_tmpfs_too_small_for_the_segment_leaves_the_app_serving(gunicorn_factory, tmpfs):
    """The default geometry's shared regions (3.3 MiB) do not fit in 1 MiB: monitoring is off with one
    clear log line, the app answers every request."""
    shm = tmpfs("1m")
    server = gunicorn_factory(workers=2, segment_dir=shm, monitored=False)
    assert _ok(load(server.port, 50, concurrency=4)) == 50
    assert server.proc.poll() is None
    log = server.log_text()
    assert log.count("on_starting hook failed") == 1, log
    assert "NoSpace" in log and "segment_dir" in log
    assert not server.segment_files()
    assert raw_get(server.metrics_port, "/metrics", timeout=2) == 0  # nothing announced, nothing bound


def _free_privileged_udp_port() -> int:
    for port in range(700, 1000):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free UDP port below 1024")


def test_root_master_runs_the_aggregator_as_gunicorns_user(gunicorn_factory):
    """gunicorn as root with --user nobody: the aggregator binds SNMP on a port below 1024, then runs
    as nobody (the process that parses the network's input), and serves; counting stays exact."""
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("starting gunicorn as root needs root")
        pytest.skip("needs root")
    snmpget = shutil.which("snmpget")
    if snmpget is None:
        if os.environ.get("CI") == "true":
            pytest.fail("snmpget is not installed (Debian: snmp)")
        pytest.skip("snmpget is not installed")
    nobody = pwd.getpwnam("nobody")
    port = _free_privileged_udp_port()
    # --preload: this machine's interpreter lives under /root (0700), which nobody cannot read
    server = gunicorn_factory(workers=2, args=("--preload", "--user", "nobody", "--group", str(nobody.pw_gid)),
                              env={"ROCKSTAR_ENABLE_SNMP": "1", "ROCKSTAR_SNMP_PORT": str(port),
                                   "ROCKSTAR_SNMP_COMMUNITY": "c0mmunity-under-1024"})
    (aggregator,) = server.aggregator_pids()
    assert psutil.Process(aggregator).uids() == (nobody.pw_uid,) * 3
    assert psutil.Process(aggregator).gids() == (nobody.pw_gid,) * 3
    assert {psutil.Process(pid).uids().real for pid in server.worker_pids()} == {nobody.pw_uid}
    total = _ok(load(server.port, 100, concurrency=4))
    server.wait_total(total)
    out = subprocess.run([snmpget, "-v2c", "-c", "c0mmunity-under-1024", "-On", "-r", "2", "-t", "2",
                          f"127.0.0.1:{port}", "1.3.6.1.2.1.1.5.0"], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0 and "1.3.6.1.2.1.1.5.0 = STRING" in out.stdout, out
    assert "running as uid" in server.log_text()


@pytest.fixture
def shared_shm():
    """A world-writable sticky directory in /dev/shm (like /dev/shm itself) that nobody can reach."""
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("acting as another user needs root")
        pytest.skip("needs root")
    path = Path(tempfile.mkdtemp(prefix="rockstar-test-", dir="/dev/shm"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _as_nobody(work, seconds: float) -> int:
    """Fork a child that becomes nobody and runs ``work(deadline)`` (only already-imported modules:
    nobody cannot read this machine's interpreter). Returns its pid; reap with os.waitpid."""
    nobody = pwd.getpwnam("nobody")
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            work(time.monotonic() + seconds)
            code = 0
        finally:
            os._exit(code)
    return pid


def _squat_lock_names(directory: Path, deadline: float) -> None:
    """What an attacker did to main: create and flock ``<segment>.agg`` for every segment that appears,
    and try to open the segments themselves."""
    held = []
    while time.monotonic() < deadline:
        for name in os.listdir(directory):
            if name.endswith(".seg") and not os.path.exists(directory / f"{name}.agg.squatted"):
                try:
                    fd = os.open(directory / f"{name}.agg", os.O_RDWR | os.O_CREAT, 0o666)
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    held.append(fd)
                except OSError:
                    pass
                try:
                    os.open(directory / name, os.O_RDONLY)
                    os.close(os.open(directory / f"{name}.read-by-nobody", os.O_CREAT | os.O_WRONLY, 0o666))
                except OSError:
                    pass
                os.close(os.open(directory / f"{name}.agg.squatted", os.O_CREAT | os.O_WRONLY, 0o666))
        time.sleep(0.02)  # the attacker's pace, not a synchronisation: the test polls for its work


def test_nobody_squatting_the_segment_dir_stops_nothing(gunicorn_factory, shared_shm):
    """In a world-writable segment_dir another user creates and locks the names beside our segment
    and plants a 'stale' segment of their own: the aggregator still serves, also after a restart,
    nobody reads the segment, and their file is left alone."""
    planted = shared_shm / "rockstar-mp-999999-0badf00d.seg"
    seg = Segment.create(str(shared_shm), Geometry(n_slabs=1, slab_max_series=16, slab_heap_bytes=2048,
                                                   slab_max_values=64, retired_max_series=16,
                                                   retired_heap_bytes=2048, retired_max_values=64))
    Header.created.set(seg.buf, time.time() - 3600)  # an hour old, its master long dead
    Header.masters[0].set(seg.buf, 999999)
    os.rename(seg.path, planted)
    seg.close()
    os.chown(planted, pwd.getpwnam("nobody").pw_uid, -1)
    planted_bytes = planted.read_bytes()
    squatter = _as_nobody(lambda deadline: _squat_lock_names(shared_shm, deadline), seconds=20)
    try:
        server = gunicorn_factory(workers=2, segment_dir=shared_shm)
        poll(lambda: list(shared_shm.glob("*.agg.squatted")) and
             len(list(shared_shm.glob("*.agg.squatted"))) == len(list(shared_shm.glob("*.seg"))),
             message="the squatter at work on every segment")
        (aggregator,) = server.aggregator_pids()
        os.kill(aggregator, signal.SIGKILL)  # the new one must take the lock despite the squatter
        poll(lambda: server.metrics()["system"]["aggregator_starts"] == 2, message="a new aggregator serving")
        total = _ok(load(server.port, 40, concurrency=4))
        server.wait_total(total)
        assert [p.name for p in shared_shm.glob("*.read-by-nobody")] == [f"{planted.name}.read-by-nobody"]
        assert planted.read_bytes() == planted_bytes  # neither attached as ours nor removed
    finally:
        os.kill(squatter, signal.SIGKILL)
        os.waitpid(squatter, 0)

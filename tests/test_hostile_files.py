"""Nothing in a directory others can write is trusted (issue 10).

The server runs with ``run_dir`` in a world-writable sticky directory (``/tmp``-like). Before it starts, a
process running as ``nobody`` squats every name we would use there (symbolic links to files it wants
written or chmodded, files and directories of its own); after it starts, it plants a symbolic link at
every temporary name it can see. Neither a token nor a write, a chmod or a truncation may reach any of
them, and history, profiling and the aggregator still work, from a private directory.
"""
from __future__ import annotations

import json
import logging
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote

import psutil
import pytest

from rockstar_mp import safefs
from rockstar_mp.aggregator.history import HISTORY_FILE, HistoryWriter
from tests.helpers import free_port, http_get, load, poll

TOKEN = "hostile-files-token-5d1c9e"
NOBODY = pwd.getpwnam("nobody").pw_uid

# A gunicorn config whose monitoring config changes when RETENTION_FILE does: a HUP then makes the master
# rewrite the aggregator's config file (MonitoringManager.reload), the moment a planted link would bite.
CONF = '''
import os, pathlib
from rockstar_mp import MonitoringConfig
from rockstar_mp.gunicorn import *  # noqa: F401,F403
bind = os.environ["BIND"]
workers = int(os.environ["WORKERS"])
retention = float(pathlib.Path(os.environ["RETENTION_FILE"]).read_text())
configure(MonitoringConfig(enable_metrics=True, history_retention=retention))  # noqa: F405
'''


def as_nobody(*argv) -> str:
    """Run a command as ``nobody`` (the other local user); its stdout."""
    proc = subprocess.run([str(a) for a in argv], user="nobody", group="nogroup", capture_output=True,
                          text=True)
    assert proc.returncode == 0, f"{argv} as nobody: {proc.stderr}"
    return proc.stdout


def fingerprint(path: Path) -> tuple:
    """What must not change in a file we were lured at: owner, mode, size and bytes."""
    info = os.lstat(path)
    return info.st_uid, stat.S_IMODE(info.st_mode), path.read_bytes()


@pytest.fixture
def shared():
    """A world-writable sticky directory that ``nobody`` can reach (under /tmp, not the 0700 tmp_path)."""
    path = Path(tempfile.mkdtemp(prefix="rockstar-shared-"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def aggregator_config(server) -> Path:
    """The config file the master wrote for its aggregator (``--config``): it lies in the run dir used."""
    cmdline = psutil.Process(server.aggregator_pids()[0]).cmdline()
    return Path(cmdline[cmdline.index("--config") + 1])


def assert_private_dir(path: Path) -> None:
    info = os.lstat(path)
    assert stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid(), path
    assert stat.S_IMODE(info.st_mode) == 0o700, (path, oct(info.st_mode))


def tokens_readable_by_nobody(directory: Path) -> str:
    """Every file under ``directory`` that ``nobody`` can read and that holds the token."""
    return as_nobody("sh", "-c", f"grep -rsl {TOKEN} {directory}; true")


def history_points(server, name: str) -> list | None:
    """The recorded ``[[ts, value], ...]`` of ``name``, or None before its first snapshot."""
    status, _, body = http_get(f"{server.url}/history?name={quote(name)}&since=0")
    if status == 404:
        return None
    if status != 200:
        raise ValueError(f"history: HTTP {status}: {body!r}")
    return json.loads(body)["points"]


# -- a shared run dir full of squatted names ----------------------------------------------------------
def test_squatted_names_in_a_shared_run_dir_get_nothing(gunicorn_factory, shared, tmp_path):
    uid = os.geteuid()
    victims = {}
    for name in ("wal", "shm", "journal"):  # files of ours an attacker would like us to overwrite
        victims[name] = tmp_path / f"victim-{name}"
        victims[name].write_bytes(f"precious {name}\n".encode())
        victims[name].chmod(0o644)
    loot = shared / "loot"  # the attacker's own readable file, where it wants our token
    as_nobody("sh", "-c", f"umask 0; : > {loot}")
    evil = shared / "evil"
    as_nobody("mkdir", "-m", "0777", evil)
    history = shared / HISTORY_FILE
    as_nobody("sh", "-c", f"umask 0; : > {history}")  # pre-created: would stay the attacker's
    for name in ("wal", "shm", "journal"):
        as_nobody("ln", "-s", victims[name], f"{history}-{name}")
    as_nobody("mkdir", "-m", "0777", shared / "control")  # profiling's socket directory
    as_nobody("ln", "-s", evil, shared / f"rockstar-mp-{uid}")  # our private subdirectory's name
    squatted = {p: fingerprint(p) for p in [*victims.values(), loot, history]}

    retention = tmp_path / "retention"
    retention.write_text("86400")
    conf = tmp_path / "conf.py"
    conf.write_text(CONF)
    pprof_port = free_port()
    g = gunicorn_factory(workers=2, args=("-c", str(conf)),
                         env={"ROCKSTAR_RUN_DIR": str(shared), "ROCKSTAR_AUTH_TOKEN": TOKEN,
                              "ROCKSTAR_HISTORY_INTERVAL": "0.5", "RETENTION_FILE": str(retention),
                              "ROCKSTAR_ENABLE_PPROF": "1", "ROCKSTAR_PPROF_PORT": str(pprof_port)})

    run_dir = aggregator_config(g).parent
    assert run_dir.parent == shared and run_dir != shared / f"rockstar-mp-{uid}"  # squatted: a fresh one
    assert_private_dir(run_dir)
    assert load(g.port, 20) == {200: 20}
    poll(lambda: history_points(g, "http.requests") and history_points(g, "http.requests")[-1][1] == 20,
         timeout=15, message="20 requests in the history")
    assert os.lstat(run_dir / HISTORY_FILE).st_uid == uid
    status, _, body = http_get(f"http://127.0.0.1:{pprof_port}/debug/pprof/goroutine?debug=1")
    assert status == 200, body
    for pid in g.worker_pids():
        assert f'"pid": "{pid}"' in body.decode()

    # The attacker links every temporary name it can see to its loot, then a HUP rewrites the config.
    for entry in as_nobody("ls", "-A", shared).split():
        if re.fullmatch(r"aggregator-.*\.json", entry):
            as_nobody("ln", "-s", loot, shared / f"{entry}.tmp")
    aggregator = g.aggregator_pids()
    retention.write_text("86401")
    g.signal(signal.SIGHUP)
    poll(lambda: g.aggregator_pids() and g.aggregator_pids() != aggregator, timeout=20,
         message="the aggregator restarted with the reloaded config")
    poll(lambda: g.metrics()["system"]["workers_live"] == 2, timeout=20, message="the workers after HUP")

    for path, before in squatted.items():
        assert fingerprint(path) == before, path
    assert os.listdir(evil) == [] and os.listdir(shared / "control") == []
    assert os.lstat(shared / "control").st_uid == NOBODY
    assert tokens_readable_by_nobody(shared) == ""
    assert http_get(g.url)[0] == 200


# -- leftovers of a master that was SIGKILLed ------------------------------------------------------------
def test_a_sigkilled_masters_config_is_removed_by_the_next_start(gunicorn_factory, shared):
    env = {"ROCKSTAR_RUN_DIR": str(shared), "ROCKSTAR_AUTH_TOKEN": TOKEN}
    first = gunicorn_factory(workers=1, env=env)
    config = aggregator_config(first)
    assert config.parent == shared / f"rockstar-mp-{os.geteuid()}"  # the shared dir's private subdirectory
    assert_private_dir(config.parent)
    assert TOKEN in config.read_text()
    first.signal(signal.SIGKILL)
    first.proc.wait()
    poll(lambda: not first.aggregator_pids(), timeout=10, message="the aggregator gone with its master")
    assert config.exists()  # nothing ran at the SIGKILL

    second = gunicorn_factory(workers=1, env=env)
    assert not config.exists()
    assert aggregator_config(second).exists()


def test_a_sigkilled_masters_private_temp_dir_is_removed_by_the_next_start(gunicorn_factory, tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {"TMPDIR": str(tmp), "ROCKSTAR_AUTH_TOKEN": TOKEN}
    first = gunicorn_factory(workers=1, env=env)
    run_dir = aggregator_config(first).parent
    assert run_dir.parent == tmp
    first.signal(signal.SIGKILL)
    first.proc.wait()
    poll(lambda: not first.aggregator_pids(), timeout=10, message="the aggregator gone with its master")
    assert run_dir.exists()

    second = gunicorn_factory(workers=1, env=env)
    assert not run_dir.exists()
    assert aggregator_config(second).parent.parent == tmp


# -- the history file removed under a running aggregator ------------------------------------------------
def test_a_history_file_deleted_or_replaced_is_recreated_and_counted(gunicorn_factory, shared):
    g = gunicorn_factory(workers=1, env={"ROCKSTAR_RUN_DIR": str(shared), "ROCKSTAR_HISTORY_INTERVAL": "0.5"})
    history = aggregator_config(g).parent / HISTORY_FILE
    assert load(g.port, 1) == {200: 1}
    poll(lambda: history_points(g, "http.requests"), timeout=10, message="a first snapshot")
    assert g.metrics()["system"]["history_errors"] == 0

    history.unlink()
    poll(lambda: g.metrics()["system"]["history_errors"] == 1, timeout=10, message="the deletion counted")
    poll(history.exists, timeout=10, message="the history file recreated")
    assert load(g.port, 3) == {200: 3}
    poll(lambda: [v for _, v in history_points(g, "http.requests")][-1:] == [4], timeout=10,
         message="new points in the new file")

    copy = history.with_name("copy")
    shutil.copyfile(history, copy)
    os.replace(copy, history)  # another inode under the same name
    poll(lambda: g.metrics()["system"]["history_errors"] == 2, timeout=10, message="the replacement counted")
    assert load(g.port, 2) == {200: 2}
    poll(lambda: [v for _, v in history_points(g, "http.requests")][-1:] == [6], timeout=10,
         message="points written to the file now at that name")


# -- an explicit history_path in a shared directory --------------------------------------------------------
@pytest.mark.parametrize("suffix", ["", "-wal", "-shm"])
@pytest.mark.parametrize("squat", ["symlink", "foreign file"])
def test_an_explicit_history_path_refuses_what_is_not_ours(shared, tmp_path, caplog, suffix, squat):
    path = shared / "h.sqlite3"
    if squat == "symlink":
        lured = tmp_path / "victim"
        lured.write_bytes(b"precious\n")
        lured.chmod(0o644)
        as_nobody("ln", "-s", lured, f"{path}{suffix}")
    else:
        lured = Path(f"{path}{suffix}")
        as_nobody("sh", "-c", f"umask 0; : > {lured}")
    before = fingerprint(lured)
    writer = HistoryWriter(str(path), 10.0, 3600.0)
    try:
        with caplog.at_level(logging.WARNING, logger="rockstar_mp.aggregator"):
            results = [writer.submit(100.0 + i, {"a": ("gauge", float(i))}).result() for i in range(3)]
    finally:
        writer.close()
    assert results == [False, False, False]
    assert writer.stats() == {"history_errors": 3}
    assert fingerprint(lured) == before
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and f"{path}{suffix}" in warnings[0], warnings


# -- safefs on its own ----------------------------------------------------------------------------------
def test_an_atomic_write_goes_through_no_planted_name(shared):
    path = shared / "aggregator-1-x.json"
    loot = shared / "loot"
    as_nobody("sh", "-c", f"umask 0; : > {loot}")
    for name in (path, f"{path}.tmp"):  # the config's name and the temporary name it had before
        as_nobody("ln", "-s", loot, name)
    safefs.write_atomic(str(path), TOKEN.encode())
    assert fingerprint(loot) == (NOBODY, 0o666, b"")
    assert fingerprint(path) == (os.geteuid(), 0o600, TOKEN.encode())
    assert sorted(os.listdir(shared)) == ["aggregator-1-x.json", "aggregator-1-x.json.tmp", "loot"]


def test_a_private_run_dir_is_used_as_is_and_a_shared_one_gets_a_subdirectory(shared, tmp_path):
    private = tmp_path / "run"
    assert safefs.effective_run_dir(str(private)) == (str(private), False)  # created 0700
    assert_private_dir(private)
    own = shared / f"rockstar-mp-{os.geteuid()}"
    assert safefs.effective_run_dir(str(shared), create=False) is None
    assert safefs.effective_run_dir(str(shared)) == (str(own), False)
    assert_private_dir(own)
    assert safefs.effective_run_dir(str(shared), create=False) == (str(own), False)

"""The SNMP agent and ROCKSTAR-MP-MIB, driven with the real net-snmp tools against a real gunicorn.

Tools missing: the test fails under CI (``CI=true``) and is skipped elsewhere. Tests that translate names
(smilint, ``-m ROCKSTAR-MP-MIB``, snmptable) also need the IETF base modules (SNMPv2-SMI/TC/CONF/MIB),
which Debian main does not ship: they are looked for in the usual MIB directories and in
``$ROCKSTAR_TEST_MIBDIRS`` (colon-separated), and those tests are skipped with a reason when absent.
"""
from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest

from rockstar_mp.aggregator.snmp import mib_path, render_mib
from rockstar_mp.aggregator.snmp.agent import engine_id
from rockstar_mp.aggregator.snmp.mibdef import DEFAULT_BASE, oid_of
from rockstar_mp.config import MonitoringConfig, parse_trap_targets, parse_users
from rockstar_mp.segment import fit
from tests.helpers import ROOT, Gunicorn, free_port, http_get, limit, load, poll, stop_process

CI = os.environ.get("CI") == "true"
BASE = ".".join(map(str, DEFAULT_BASE))
OIDS = {name: "." + ".".join(map(str, oid)) for name, oid in oid_of(DEFAULT_BASE).items()}
COMMUNITY = "ro-c0mmunity-x7"
TRAP_COMMUNITY = "trap-c0mmunity-q2"
USER, AUTH_KEY, PRIV_KEY = "alice", "alice-auth-key-9f", "alice-priv-key-3c"
SECRETS = (COMMUNITY, TRAP_COMMUNITY, AUTH_KEY, PRIV_KEY)
IETF_DIRS = ("/usr/share/snmp/mibs/ietf", "/usr/share/snmp/mibs", "/usr/share/mibs/ietf", "/usr/share/mibs",
             "/var/lib/snmp/mibs/ietf", "/var/lib/mibs/ietf", "/usr/share/snmp/mibs/iana")


def tool(name: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.access(f"/usr/sbin/{name}", os.X_OK) else None)
    if path is None:
        message = f"{name} is not installed (Debian: snmp, snmptrapd, snmpd, smitools)"
        if CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def ietf_dirs() -> list[str]:
    dirs = [d for d in os.environ.get("ROCKSTAR_TEST_MIBDIRS", "").split(":") if d] + list(IETF_DIRS)
    found = [d for d in dirs if any(Path(d, f"SNMPv2-SMI{ext}").is_file() for ext in ("", ".txt", ".my"))]
    if not found:
        message = ("no SNMPv2-SMI MIB module found (Debian main ships none; `make test` fetches them with "
                   ".ci/ietf-mibs.sh, or set ROCKSTAR_TEST_MIBDIRS to a directory holding SNMPv2-SMI/TC/CONF/MIB)")
        if CI:
            pytest.fail(message)
        pytest.skip(message)
    return found



def v2c(community: str = COMMUNITY) -> list[str]:
    return ["-v2c", "-c", community]


def v3(auth: str = AUTH_KEY, priv: str = PRIV_KEY, user: str = USER) -> list[str]:
    return ["-v3", "-l", "authPriv", "-u", user, "-a", "SHA", "-A", auth, "-x", "AES", "-X", priv]


def run(cmd: str, args: list, port: int, *oids: str, timeout: float = 20.0, opts=("-On", "-Oq", "-Ot", "-Oe"),
        retries: str = "1", wait: str = "1") -> subprocess.CompletedProcess:
    argv = [tool(cmd), *args, "-r", retries, "-t", wait, "-M", "/nonexistent", "-m", "", *opts,
            f"udp:127.0.0.1:{port}", *oids]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def values(out: str) -> list[tuple[tuple, str]]:
    """``[(oid tuple, value text)]`` from ``-On -Oq`` output."""
    rows = []
    for line in out.splitlines():
        if not line.startswith("."):
            continue
        oid, _, value = line.partition(" ")
        rows.append((tuple(int(p) for p in oid.strip(".").split(".")), value.strip()))
    return rows


def value_of(port: int, name: str, args=None) -> int:
    result = run("snmpget", args or v2c(), port, OIDS[name] + ".0")
    assert result.returncode == 0, result.stderr
    return int(values(result.stdout)[0][1])


def column(port: int, name: str, args=None) -> dict:
    """``{index (last arc): value}`` of a table column, walked with GETBULK."""
    result = run("snmpbulkwalk", (args or v2c()) + ["-Cr50"], port, OIDS[name])
    assert result.returncode == 0, result.stderr
    return {oid[-1]: value for oid, value in values(result.stdout)}


class TrapReceiver:
    """snmptrapd on 127.0.0.1, accepting our v2c notification community and v3 user."""

    def __init__(self, tmp: Path, agent_port: int) -> None:
        self.port = free_port()
        self.log = tmp / "traps.log"
        self.log.touch()
        conf = tmp / "snmptrapd.conf"
        conf.write_text(f"authCommunity log {TRAP_COMMUNITY}\n"
                        f"createUser -e 0x{engine_id('127.0.0.1', agent_port).hex()} {USER} SHA {AUTH_KEY} AES "
                        f"{PRIV_KEY}\n"
                        f"authUser log {USER}\n")
        (tmp / "persist").mkdir(exist_ok=True)
        self.proc = subprocess.Popen(
            [tool("snmptrapd"), "-f", "-Lf", str(self.log), "-C", "-c", str(conf), "-M", "/nonexistent", "-m", "",
             "-On", "--doNotRetainNotificationLogs=yes", "-F", "TRAP %P ;; %v\n", f"udp:127.0.0.1:{self.port}"],
            env=dict(os.environ, SNMP_PERSISTENT_DIR=str(tmp / "persist")),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        poll(lambda: "NET-SNMP version" in self.log.read_text(), timeout=10, message="snmptrapd up")

    def traps(self) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if line.startswith("TRAP ")]

    def of(self, notification: str) -> list[str]:
        oid = OIDS[notification]
        return [t for t in self.traps() if f"= OID: {oid}\t" in t + "\t" or f"= OID: {oid} " in t]

    def stop(self) -> None:
        stop_process(self.proc)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tool("snmpget")
    tmp = tmp_path_factory.mktemp("snmp")
    port = free_port()
    traps = TrapReceiver(tmp, port)
    g = Gunicorn(tmp, workers=2, env={
        "ROCKSTAR_ENABLE_SNMP": "1", "ROCKSTAR_SNMP_PORT": str(port), "ROCKSTAR_SNMP_COMMUNITY": COMMUNITY,
        "ROCKSTAR_SNMP_USERS": f"{USER}:SHA:{AUTH_KEY}:AES:{PRIV_KEY}",
        "ROCKSTAR_SNMP_TRAP_TARGETS": f"v2c:{TRAP_COMMUNITY}@127.0.0.1:{traps.port},"
                                      f"v3:{USER}@127.0.0.1:{traps.port}",
        "ROCKSTAR_SNMP_ERROR_RATE_THRESHOLD": "0.5", "ROCKSTAR_SNMP_THRESHOLD_WINDOW": "5"})
    try:
        g.start()
        g.snmp_port = port
        g.traps = traps
        poll(lambda: run("snmpget", v2c(), port, "1.3.6.1.2.1.1.1.0").returncode == 0, timeout=15,
             message="the SNMP agent answering")
        yield g
    finally:
        g.stop()
        traps.stop()


# -- the MIB -------------------------------------------------------------------------------------
def test_shipped_mib_is_the_generated_one():
    shipped = mib_path().read_text()
    assert shipped == render_mib()
    assert (ROOT / "docs" / "mibs" / "ROCKSTAR-MP-MIB.txt").read_text() == shipped
    assert "mibs/*.txt" in (ROOT / "pyproject.toml").read_text()


@pytest.mark.parametrize("base", [DEFAULT_BASE, (1, 3, 6, 1, 4, 1, 99999), (1, 3, 6, 1, 4, 1, 99999, 7, 1),
                                  (1, 3, 6, 1, 3, 4242)])
def test_smilint_reports_nothing(tmp_path, base):
    smilint = tool("smilint")
    dirs = ietf_dirs()
    path = tmp_path / "ROCKSTAR-MP-MIB.txt"
    path.write_text(render_mib(base))
    result = subprocess.run([smilint, "-l", "6", "-s", str(path)], capture_output=True, text=True, timeout=30,
                            env=dict(os.environ, SMIPATH=":".join(dirs + ["/usr/share/snmp/mibs"])))
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_snmp_settings_parse_and_validate():
    users = parse_users("a:SHA:12345678:AES:abcdefgh,b:SHA256:12345678")
    assert [(u.name, u.level) for u in users] == [("a", "authPriv"), ("b", "authNoPriv")]
    assert parse_users([{"user": "c", "auth_key": "k:e,y=long", "priv_key": "p:r,iv=long"}])[0].priv_key == \
        "p:r,iv=long"
    assert parse_users('[{"user": "d", "auth_key": "12345678"}]')[0].level == "authNoPriv"
    targets = parse_trap_targets("v2c:pub@127.0.0.1:162,v3:a@127.0.0.1:1162/inform", {"a"})
    assert [(t.version, t.secret, t.port, t.inform) for t in targets] == [("v2c", "pub", 162, False),
                                                                          ("v3", "a", 1162, True)]
    config = MonitoringConfig(snmp_users="a:SHA:12345678:AES:abcdefgh").with_env(
        {"ROCKSTAR_SNMP_TRAP_TARGETS": "v3:a@127.0.0.1:99", "ROCKSTAR_SNMP_P95_THRESHOLD_MS": "250"})
    assert config.snmp_p95_threshold_ms == 250.0 and "abcdefgh" not in repr(config)
    assert MonitoringConfig.from_json(config.to_json()) == config
    config = MonitoringConfig().with_env({"ROCKSTAR_SNMP_ENGINE_ID": "0x80001F8805C0FFEE",
                                          "ROCKSTAR_SNMP_CONTACT": "ops", "ROCKSTAR_SNMP_LOCATION": "rack 7"})
    assert (config.snmp_engine_id, config.snmp_contact, config.snmp_location) == ("0x80001F8805C0FFEE", "ops", "rack 7")
    assert engine_id("127.0.0.1", 1161, config.snmp_engine_id) == bytes.fromhex("80001f8805c0ffee")
    derived = {engine_id(host, port) for host in ("127.0.0.1", "127.0.0.2") for port in (161, 1161)}
    assert len(derived) == 4 and all(5 <= len(i) <= 32 and i[:5] == bytes.fromhex("80001f8805") for i in derived)
    assert engine_id("127.0.0.1", 1161) == engine_id("127.0.0.1", 1161)  # stable across starts
    for bad in ({"snmp_users": "a:SHA:short"}, {"snmp_users": "a:XXX:12345678"},
                {"snmp_users": "a:SHA:12345678,a:SHA:12345678"}, {"snmp_trap_targets": "v3:nobody@h:1"},
                {"snmp_trap_targets": "v1:public@h:1"}, {"snmp_trap_targets": "v2c:public@h"},
                {"snmp_base_oid": "1.3.x"}, {"snmp_error_rate_threshold": 2.0},
                {"snmp_threshold_window": 0.0}, {"snmp_community": ""}, {"snmp_engine_id": "80001f88"},
                {"snmp_engine_id": "0xnothex"}, {"snmp_engine_id": "00" * 8}, {"snmp_engine_id": "ab" * 33},
                {"snmp_contact": "x" * 256}, {"snmp_location": "é" * 128}):
        with pytest.raises(ValueError):
            MonitoringConfig(**bad)
    for port in ("\u00b2", "9" * 5000, "0", "65536"):  # refused by the check, with its message, not by int()
        with pytest.raises(ValueError, match="snmp_trap_targets: expected"):
            parse_trap_targets(f"v2c:public@h:{port}")


# -- the agent against gunicorn ------------------------------------------------------------------
def test_numbers_match_the_json_endpoints_v2c_and_v3(server):
    port = server.snmp_port
    assert load(server.port, 200, "/users/bob")[200] == 200
    # under load: the SNMP figure lies between the JSON figures taken just before and just after it
    stop = threading.Event()
    loader = threading.Thread(target=lambda: [load(server.port, 20, "/") for _ in iter(stop.is_set, True)])
    loader.start()
    try:
        for args in (v2c(), v3()):
            before = json.loads(http_get(f"http://127.0.0.1:{server.metrics_port}/workload")[2])
            total = value_of(port, "rsmpTotalRequests", args)
            after = json.loads(http_get(f"http://127.0.0.1:{server.metrics_port}/workload")[2])
            assert before["total_requests"] <= total <= after["total_requests"]
    finally:
        stop.set()
        loader.join()
    # idle: equal
    def same() -> bool:
        workers = json.loads(http_get(f"http://127.0.0.1:{server.metrics_port}/workers")[2])["workers"]
        total = json.loads(http_get(f"http://127.0.0.1:{server.metrics_port}/workload")[2])["total_requests"]
        expected = {w["pid"]: w["requests"] for w in workers}
        for args in (v2c(), v3()):
            got = {pid: int(v) for pid, v in column(port, "rsmpWorkerRequests", args).items()}
            if got != expected or value_of(port, "rsmpTotalRequests", args) != total:
                return False
        return sum(expected.values()) > 0 and expected
    expected = poll(same, timeout=10, message="SNMP and JSON agreeing")
    assert value_of(port, "rsmpWorkersLive") == 2
    descr = run("snmpget", v3(), port, "1.3.6.1.2.1.1.1.0", "1.3.6.1.2.1.1.5.0", "1.3.6.1.2.1.1.3.0")
    assert "rockstar-mp" in descr.stdout and socket.gethostname() in descr.stdout, descr
    routes = column(port, "rsmpRouteName")
    assert '"/users/{name}"' in routes.values()
    if importlib.util.find_spec("rockstar_mp.aggregator.optimize"):  # the optimization figures, per worker
        assert set(column(port, "rsmpOptCount")) == set(expected)


def test_walks_are_ordered_complete_and_end_cleanly(server):
    port = server.snmp_port

    def stable(o: tuple) -> bool:
        return o[:len(DEFAULT_BASE) + 2] not in (DEFAULT_BASE + (1, 5), DEFAULT_BASE + (1, 8))

    def three_walks() -> tuple | None:
        """Each walk ordered, without repeats and ended cleanly; the three, or None if the agent's content
        moved between them (records and logs always may; a series a worker declares late, as a sketch's
        new bucket, adds a row: then they are walked again)."""
        walks = {}
        for name, cmd, args in (("next", "snmpwalk", v2c()), ("bulk", "snmpbulkwalk", v2c() + ["-Cr50"]),
                                ("v3bulk", "snmpbulkwalk", v3() + ["-Cr25"])):
            result = run(cmd, args, port, ".1", opts=("-On", "-Oq", "-Ot", "-Oe", "-Cc"))
            assert result.returncode == 0 and "not increasing" not in result.stderr, result.stderr
            rows = values(result.stdout)
            assert rows[-1][1] == "No more variables left in this MIB View (It is past the end of the MIB tree)"
            oids = [oid for oid, _ in rows[:-1]]
            assert oids == sorted(oids) and len(set(oids)) == len(oids)
            assert all(o[:7] == (1, 3, 6, 1, 2, 1, 1) or o[:len(DEFAULT_BASE)] == DEFAULT_BASE for o in oids)
            walks[name] = [o for o in oids if stable(o)]
            last = oids[-1]
        return (walks, last) if walks["next"] == walks["bulk"] == walks["v3bulk"] else None

    walks, last_oid = poll(three_walks, timeout=30, message="three walks of the same content")
    assert len(walks["next"]) > 50
    end = run("snmpgetnext", v2c(), port, "." + ".".join(map(str, last_oid)))
    assert "No more variables left in this MIB View" in end.stdout
    nothing = run("snmpget", v2c(), port, "1.3.6.1.6.3.18.1.1.1.2.0", "1.3.6.1.6.3.15.1.2.2.1.2.0",
                  OIDS["rsmpWorkerRequests"] + ".1", OIDS["rsmpWorkersLive"] + ".0")
    kinds = [v for _, v in values(nothing.stdout)]
    assert kinds[:3] == ["No Such Object available on this agent at this OID"] * 2 + [
        "No Such Instance currently exists at this OID"] and kinds[3] == "2", nothing.stdout
    assert run("snmpwalk", v2c(), port, "1.3.6.1.6.3").stdout.count("\n") <= 1  # the engine's own MIBs: nothing


def test_bad_credentials_get_nothing_and_are_counted(server):
    port = server.snmp_port
    bad_community = value_of(port, "rsmpSnmpBadCommunities")
    bad_usm = value_of(port, "rsmpSnmpBadUsm")
    bad_version = value_of(port, "rsmpSnmpBadVersions")
    for args in (v2c("wrong-community"), v2c(TRAP_COMMUNITY), ["-v1", "-c", COMMUNITY],
                 v3(auth="wrong-auth-key-1"), v3(priv="wrong-priv-key-1"), v3(user="mallory")):
        result = run("snmpget", args, port, OIDS["rsmpTotalRequests"] + ".0", "1.3.6.1.2.1.1.1.0",
                     retries="0", wait="0.5")
        assert result.returncode != 0 and values(result.stdout) == [], (args, result)
    # v2c: wrong community, notification-only community; SNMPv1 (not served: a bad version, as snmpd
    # counts a version it does not serve); v3: wrong auth key, wrong priv key, unknown user
    assert value_of(port, "rsmpSnmpBadCommunities") == bad_community + 2
    assert value_of(port, "rsmpSnmpBadVersions") == bad_version + 1
    assert value_of(port, "rsmpSnmpBadUsm") >= bad_usm + 3


def test_a_walk_of_the_whole_agent_reveals_no_secret(server):
    for args in (v2c(), v3()):
        result = run("snmpbulkwalk", args + ["-Cr50"], server.snmp_port, ".1", opts=("-On", "-Ox"))
        text = result.stdout
        for secret in SECRETS:
            assert secret not in text and secret.encode().hex(" ").upper() not in text.upper()


def test_worker_killed_trap_and_rows(server):
    port = server.snmp_port
    before = set(column(port, "rsmpWorkerAge"))
    assert before == set(server.worker_pids())
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    traps = poll(lambda: [t for t in server.traps.of("rsmpWorkerDied") if re.search(rf"= INTEGER: {victim}\b", t)],
                 timeout=limit(2.0), interval=0.02, message="rsmpWorkerDied within 2 s")
    assert any(TRAP_COMMUNITY in t for t in traps), traps  # the v2c copy, sent with the trap community
    poll(lambda: len(server.traps.of("rsmpWorkerDied")) >= 2, timeout=2, message="the v3 copy as well")

    def replaced():
        rows = set(column(port, "rsmpWorkerAge"))
        live = set(server.worker_pids())
        return victim not in rows and len(rows) == 2 and rows == live
    poll(replaced, timeout=15, message="the successor's row replacing the victim's")


def test_aggregator_started_and_error_rate_notifications(server):
    started = server.traps.of("rsmpAggregatorStarted")
    assert len(started) == 2, server.traps.traps()  # one per target: v2c and v3
    assert any(TRAP_COMMUNITY in t for t in started)
    load(server.port, 40, "/error")
    poll(lambda: len(server.traps.of("rsmpErrorRateHigh")) >= 2, timeout=5,
         message="rsmpErrorRateHigh to both targets")
    trap = server.traps.of("rsmpErrorRateHigh")[0]
    assert OIDS["rsmpNotifyThreshold"] + ".0 = Gauge32: 500000" in trap


def test_fuzz_leaves_the_agent_answering(server):
    port = server.snmp_port
    agg = psutil.Process(server.aggregator_pids()[0])
    parse_errors = value_of(port, "rsmpSnmpParseErrors")
    rss_before = agg.memory_info().rss
    valid = _get_request(COMMUNITY, (1, 3, 6, 1, 2, 1, 1, 1, 0))
    rng = random.Random(4)
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for i in range(20_000):
            kind = i % 6
            if kind == 0:
                data = rng.randbytes(rng.randrange(0, 1500))
            elif kind == 1:
                data = valid[:rng.randrange(0, len(valid))]
            elif kind == 2:  # a wrong version
                data = valid.replace(b"\x02\x01\x01", b"\x02\x01" + bytes([rng.choice((0x05, 0x7f, 0xff))]), 1)
            elif kind == 3:  # huge lengths
                data = b"\x30\x84\x7f\xff\xff\xff" + valid[2:] if rng.random() < .5 else \
                    valid[:2] + b"\x02\x84\xff\xff\xff\xff" + valid[5:]
            elif kind == 4:  # flipped bytes in a valid message
                data = bytearray(valid)
                for _ in range(3):
                    data[rng.randrange(len(data))] = rng.randrange(256)
                data = bytes(data)
            else:  # v3-looking garbage
                data = b"\x30\x81\x90\x02\x01\x03" + rng.randbytes(rng.randrange(0, 300))
            try:
                sock.sendto(data, ("127.0.0.1", port))
                sent += 1
            except OSError:
                pass
            if i % 500 == 0:
                time.sleep(0.005)  # the flood's pace, not a synchronisation: the agent's buffer drains a little
    started = time.monotonic()
    result = run("snmpget", v2c(), port, "1.3.6.1.2.1.1.1.0", retries="5", wait="1")
    assert result.returncode == 0 and "rockstar-mp" in result.stdout, result
    assert time.monotonic() - started < 10
    assert value_of(port, "rsmpSnmpParseErrors") > parse_errors
    growth = agg.memory_info().rss - rss_before
    assert growth < 32 * 1024 * 1024, f"the aggregator grew by {growth} bytes"
    assert sent > 19_000


def _tlv(tag: int, payload: bytes) -> bytes:
    n = len(payload)
    head = bytes((n,)) if n < 128 else bytes((0x82,)) + n.to_bytes(2, "big")
    return bytes((tag,)) + head + payload


def _get_request(community: str, oid: tuple) -> bytes:
    body = bytes((40 * oid[0] + oid[1],)) + bytes(oid[2:])
    varbind = _tlv(0x30, _tlv(0x06, body) + b"\x05\x00")
    pdu = _tlv(0xA0, b"\x02\x01\x07" + b"\x02\x01\x00" * 2 + _tlv(0x30, varbind))
    return _tlv(0x30, b"\x02\x01\x01" + _tlv(0x04, community.encode()) + pdu)


# -- names: the MIB loaded in net-snmp -----------------------------------------------------------
def test_named_walk_and_snmptable(server):
    dirs = ietf_dirs()
    mib_dirs = ":".join(dirs + [str(mib_path().parent), "/usr/share/snmp/mibs"])
    common = ["-M", mib_dirs, "-m", "ROCKSTAR-MP-MIB:SNMPv2-MIB", *v2c(), "-r", "1", "-t", "1"]
    target = f"udp:127.0.0.1:{server.snmp_port}"
    walk = subprocess.run([tool("snmpwalk"), *common, target, "1.3.6.1.2.1.1"], capture_output=True,
                          text=True, timeout=20)
    assert "SNMPv2-MIB::sysDescr.0" in walk.stdout and "rockstar-mp" in walk.stdout, walk
    walk = subprocess.run([tool("snmpbulkwalk"), *common, target, "ROCKSTAR-MP-MIB::rsmpServer"],
                          capture_output=True, text=True, timeout=20)
    assert "ROCKSTAR-MP-MIB::rsmpTotalRequests.0" in walk.stdout and "Cannot" not in walk.stderr, walk
    table = subprocess.run([tool("snmptable"), *common, "-Ci", "-Cb", target, "ROCKSTAR-MP-MIB::rsmpWorkerTable"],
                           capture_output=True, text=True, timeout=20)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    header = next(line for line in lines if "Requests" in line)
    assert "Age" in header and "State" in header and "HeartbeatAge" in header
    pids = {str(p) for p in server.worker_pids()}
    assert sum(any(line.split()[:1] == [p] for p in pids) for line in lines) == 2, table.stdout


# -- start/stop at runtime, in-process ----------------------------------------------------------
def test_agent_starts_and_stops_at_runtime(tmp_path):
    tool("snmpget")
    from rockstar_mp.aggregator.snmp import SnmpAgent
    from rockstar_mp.aggregator.state import AggregatorState
    from rockstar_mp.aggregator.workload import LogRecord, WorkloadRecord
    from rockstar_mp.segment import Segment

    port = free_port()
    config = MonitoringConfig(enable_snmp=True, snmp_port=port, snmp_community=COMMUNITY,
                              snmp_users=f"{USER}:SHA:{AUTH_KEY}:AES:{PRIV_KEY}",
                              segment_dir=str(tmp_path), max_workers=2)
    segment = Segment.create(str(tmp_path))

    async def get() -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            tool("snmpget"), *v2c(), "-r", "0", "-t", "0.5", "-On", "-Oq", f"udp:127.0.0.1:{port}",
            OIDS["rsmpWorkersLive"] + ".0", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, _ = await proc.communicate()
        return proc.returncode, out.decode()

    async def scenario() -> None:
        state = AggregatorState(segment, config)
        for i in range(5):  # rows in the records and logs tables, with long and non-ASCII strings
            state.rings.records.append(WorkloadRecord((i + 1, time.time(), 0.001 * i, 10 * i, 4242, 200 + i, b"GET",
                                                       fit("/r/" + "é" * 200 * (i == 2), 64), f"id-{i}".encode(),
                                                       b"acme")))
            state.rings.logs.append(LogRecord(time.time(), 4242, 30, "app", f"message {i}"))
        agent = SnmpAgent(state)
        await agent.start()
        assert agent.running and (await get()) == (0, f"{OIDS['rsmpWorkersLive']}.0 0\n")
        await agent.stop()
        assert not agent.running and (await get())[0] != 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", port))  # the port was released
            with pytest.raises(OSError):
                await agent.start(retry_seconds=0)  # a busy port is an error, not silence
            assert "cannot bind" in agent.error and not agent.running
        await agent.start()
        assert (await get())[0] == 0
        # SNMPv2c and SNMPv3 (two paths to the same answers) walk the same tree, whatever the walk
        walks = []
        for principal in (v2c(), v3()):
            for cmd, extra in (("snmpbulkwalk", ["-Cr7"]), ("snmpwalk", []), ("snmpbulkwalk", ["-Cn1", "-Cr3"])):
                proc = await asyncio.create_subprocess_exec(
                    tool(cmd), *principal, *extra, "-On", "-Ox", f"udp:127.0.0.1:{port}", ".1",
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                out, _ = await proc.communicate()
                moving = (".1.3.6.1.2.1.1.3.0 ", OIDS["rsmpSnmpRequests"] + ".0 ", OIDS["rsmpUptime"] + ".0 ")
                walks.append([line for line in out.decode().splitlines() if not line.startswith(moving)])
        for a, b in zip(walks[:3], walks[3:], strict=True):
            differing = (x + "   |   " + y for x, y in zip(a, b, strict=False) if x != y)  # lengths may differ
            assert a == b, "\n".join(differing)
        assert len(walks[0]) > 60
        await agent.stop()

    try:
        asyncio.run(scenario())
    finally:
        segment.close()
        for path in tmp_path.glob("*.seg"):
            path.unlink()


# -- the view's order, against brute force --------------------------------------------------------
def test_view_next_and_after_follow_oid_order():
    from rockstar_mp.aggregator.snmp.tree import INT, Scalars, Table, View

    rng = random.Random(7)
    nodes = [Scalars((1, 3, 6, 1, 2, 1, 1), {s: (INT, s) for s in (1, 3, 5, 7)})]
    for sub, width in ((2, 1), (3, 2), (4, 1), (9, 1)):
        prefix = DEFAULT_BASE + (1, sub, 1)
        keys = {tuple(rng.randrange(1, 300) for _ in range(width)) for _ in range(rng.randrange(0, 40))}
        rows = [(k, tuple(k[0] * 10 + c for c in range(3))) for k in keys]
        nodes.append(Table(prefix, [(2, INT), (3, INT), (7, INT)], rows))
    nodes.append(Scalars(DEFAULT_BASE + (1, 1), {s: (INT, s) for s in range(1, 23)}))
    view = View(nodes, 0.0)
    everything = sorted([n.prefix + (s, 0) for n in nodes if isinstance(n, Scalars) for s in n.values] +
                        [n.prefix + (c,) + k for n in nodes if isinstance(n, Table) for c in n.cols for k in n.keys])
    probes = everything + [o[:i] for o in everything[::7] for i in range(1, len(o))] + \
        [o[:-1] + (o[-1] + 1,) for o in everything[::5]] + [(0,), (1, 3, 6, 1, 9), (3,), DEFAULT_BASE + (1, 2, 1, 99)]
    for probe in probes:
        after = [o for o in everything if o > probe]
        got = view.next(probe)
        assert (got[0] if got else None) == (after[0] if after else None), probe
        assert [o for o, _ in view.after(probe)] == after, probe
    for o in everything:
        assert view.get(o) is not None and view.exists(o)
    assert view.get(DEFAULT_BASE + (1, 1, 1)) is None and not view.exists(DEFAULT_BASE + (1, 1, 99, 0))

"""ROCKSTAR-MP-MIB as data: every object's name, sub-identifier, syntax and description.

The agent serves exactly these objects (``build.py``) and ``render_mib`` writes the SMIv2 module from
them, so the served tree and the shipped MIB cannot drift apart (a test compares the shipped file with
``render_mib()``). OIDs below are relative to the base (``snmp_base_oid``, default net-snmp's playpen
``1.3.6.1.4.1.8072.9999.9999``)::

    base.0        rsmpNotifications       (.1 rsmpWorkerDied, .2 rsmpAggregatorStarted,
                                           .3 rsmpErrorRateHigh, .4 rsmpLatencyHigh,
                                           .5 rsmpWorkerRecycled, .6 rsmpWorkerMemoryGrowing)
    base.1        rsmpObjects
    base.1.1      rsmpServer              scalars
    base.1.2-9    tables: workers, counters, gauges, records, routes, tenants, logs, optimization
    base.1.10     rsmpNotifyObjects       accessible-for-notify varbinds of the notifications
    base.2        rsmpConformance         groups and the compliance statement
"""
from __future__ import annotations

from dataclasses import dataclass

DEFAULT_BASE = (1, 3, 6, 1, 4, 1, 8072, 9999, 9999)
MODULE = "ROCKSTAR-MP-MIB"
OBJECTS, NOTIFICATIONS, CONFORMANCE = 1, 0, 2


@dataclass(frozen=True)
class Obj:
    name: str
    sub: int
    syntax: str  # the SMI syntax as written in the MIB
    description: str
    units: str | None = None
    access: str = "read-only"


@dataclass(frozen=True)
class Table:
    name: str  # rsmpWorkerTable; the entry is rsmpWorkerEntry, the row type RsmpWorkerEntry
    sub: int
    description: str
    index: tuple  # names of the index columns
    columns: tuple  # Obj, by sub-identifier
    entry_description: str = ""

    @property
    def entry(self) -> str:
        return self.name[:-5] + "Entry"

    @property
    def row_type(self) -> str:
        return self.entry[0].upper() + self.entry[1:]


@dataclass(frozen=True)
class Notification:
    name: str
    sub: int
    objects: tuple
    description: str


D = "DisplayString (SIZE (0..255))"
SERVER = (
    Obj("rsmpVersion", 1, D, "The version of rockstar-mp serving this agent."),
    Obj("rsmpUptime", 2, "TimeTicks", "Time since the monitored server's segment was created."),
    Obj("rsmpWorkersLive", 3, "Gauge32", "Workers alive now."),
    Obj("rsmpTotalRequests", 4, "Counter64", "Requests recorded by every worker, dead ones included."),
    Obj("rsmpAvgDuration", 5, "Gauge32", "Average request duration over the server's lifetime.",
        "microseconds"),
    Obj("rsmpErrors", 6, "Counter64", "Requests answered with a 5xx status."),
    Obj("rsmpRecordsDropped", 7, "Counter64", "Workload records lost because a worker's ring was full."),
    Obj("rsmpNumCpu", 8, "Integer32", "CPUs of the machine."),
    Obj("rsmpThreads", 9, "Gauge32", "Threads of every live worker, added up."),
    Obj("rsmpMemory", 10, "Gauge32", "Resident memory of every live worker, added up.", "KiB"),
    Obj("rsmpGcCollections", 11, "Counter64", "Garbage collections run in the workers."),
    Obj("rsmpLogsDropped", 12, "Counter64", "Log records lost because a worker's ring was full."),
    Obj("rsmpWorkersFolded", 13, "Counter64", "Dead workers whose counts were folded into the totals."),
    Obj("rsmpAggregatorStarts", 14, "Unsigned32", "How often an aggregator started on this segment."),
    Obj("rsmpP50Duration", 15, "Gauge32", "Median request duration over the server's lifetime.",
        "microseconds"),
    Obj("rsmpP95Duration", 16, "Gauge32", "95th percentile of the request duration.", "microseconds"),
    Obj("rsmpP99Duration", 17, "Gauge32", "99th percentile of the request duration.", "microseconds"),
    Obj("rsmpSnmpBadCommunities", 18, "Counter32",
        "SNMP messages refused: unknown community, or a community that may not read."),
    Obj("rsmpSnmpBadUsm", 19, "Counter32",
        "SNMPv3 messages refused: unknown user, wrong digest, decryption error or wrong level."),
    Obj("rsmpSnmpBadVersions", 20, "Counter32", "SNMP messages of an unsupported version (SNMPv1 included)."),
    Obj("rsmpSnmpParseErrors", 21, "Counter32", "SNMP messages that could not be decoded."),
    Obj("rsmpSnmpRequests", 22, "Counter32", "SNMP requests answered."),
    Obj("rsmpMemoryRecycles", 23, "Counter32",
        "Workers that went over max_worker_memory and were replaced after their requests in progress."),
)

INDEX_RANGE = "Integer32 (1..2147483647)"
WORKERS = Table("rsmpWorkerTable", 2, "Live workers, one row each, indexed by process id.", ("rsmpWorkerPid",), (
    Obj("rsmpWorkerPid", 1, INDEX_RANGE, "The worker's process id.", access="not-accessible"),
    Obj("rsmpWorkerAge", 2, "Unsigned32", "gunicorn's age of the worker (never reused)."),
    Obj("rsmpWorkerState", 3, "INTEGER { free(1), live(2), retired(3) }", "The worker's slab state."),
    Obj("rsmpWorkerRequests", 4, "Counter64", "Requests this worker recorded."),
    Obj("rsmpWorkerRss", 5, "Gauge32", "Resident memory of the worker.", "KiB"),
    Obj("rsmpWorkerCpu", 6, "Gauge32", "CPU use of the worker in hundredths of a percent.",
        "0.01 percent"),
    Obj("rsmpWorkerCpuTime", 7, "Counter64", "CPU time (user + system) of the worker.", "centiseconds"),
    Obj("rsmpWorkerHeartbeatAge", 8, "Gauge32", "Time since the worker's last heartbeat.", "milliseconds"),
    Obj("rsmpWorkerThreads", 9, "Gauge32", "Threads of the worker."),
    Obj("rsmpWorkerSlab", 10, "Integer32", "The worker's slab in the shared segment."),
    Obj("rsmpWorkerInFlight", 11, "Gauge32", "Requests the worker is handling now."),
    Obj("rsmpWorkerMemorySlope", 12, "Integer32",
        "How fast the worker's memory (USS, or PSS with max_worker_memory_kind pss) grew over the history "
        "(least squares); 0 until three snapshots.", "KiB per hour"),
    Obj("rsmpWorkerRecycling", 13, "Gauge32",
        "0, or the worker's memory when it went over max_worker_memory: it exits after its requests in "
        "progress and the master starts another.", "KiB"),
))
COUNTERS = Table("rsmpCounterTable", 3, "Every counter series, merged over all workers, dead ones included.",
                 ("rsmpCounterIndex",), (
    Obj("rsmpCounterIndex", 1, INDEX_RANGE, "A number for the series, stable while the aggregator runs.",
        access="not-accessible"),
    Obj("rsmpCounterName", 2, D, "The declared name of the counter."),
    Obj("rsmpCounterLabels", 3, D, "The label set, as name=\"value\" pairs separated by commas."),
    Obj("rsmpCounterValue", 4, "Counter64", "The value (fractions dropped)."),
    Obj("rsmpCounterText", 5, D, "The exact value as a decimal number."),
))
GAUGES = Table("rsmpGaugeTable", 4, "Every gauge series of the live workers, merged by the gauge's mode.",
               ("rsmpGaugeIndex", "rsmpGaugePid"), (
    Obj("rsmpGaugeIndex", 1, INDEX_RANGE, "A number for the series, stable while the aggregator runs.",
        access="not-accessible"),
    Obj("rsmpGaugePid", 2, "Integer32 (0..2147483647)",
        "The worker of this reading for gauges kept per worker, else 0.", access="not-accessible"),
    Obj("rsmpGaugeName", 3, D, "The declared name of the gauge."),
    Obj("rsmpGaugeLabels", 4, D, "The label set, as name=\"value\" pairs separated by commas."),
    Obj("rsmpGaugeValue", 5, "Integer32", "The value, rounded to an integer and clamped to Integer32."),
    Obj("rsmpGaugeText", 6, D, "The exact value as a decimal number."),
))
RECORDS = Table("rsmpRecordTable", 5,
                "The most recent workload records (recent_records of them), one per request, indexed by a "
                "sequence number that grows with every record.", ("rsmpRecordIndex",), (
    Obj("rsmpRecordIndex", 1, INDEX_RANGE, "The record's sequence number.", access="not-accessible"),
    Obj("rsmpRecordStart", 2, "DateAndTime", "When the request started (UTC)."),
    Obj("rsmpRecordDuration", 3, "Gauge32", "How long the request took.", "microseconds"),
    Obj("rsmpRecordPid", 4, "Integer32", "The worker that served the request."),
    Obj("rsmpRecordMethod", 5, D, "The HTTP method."),
    Obj("rsmpRecordRoute", 6, D, "The route template (or path)."),
    Obj("rsmpRecordStatus", 7, "Integer32", "The HTTP status code."),
    Obj("rsmpRecordTenant", 8, D, "The tenant (X-Tenant-ID), empty if none."),
    Obj("rsmpRecordRequestId", 9, D, "The request id."),
    Obj("rsmpRecordBytes", 10, "Gauge32", "Bytes of the response body.", "bytes"),
))


def _aggregate_table(name: str, sub: int, what: str) -> Table:
    p = name[:-5]
    return Table(name, sub, f"Requests aggregated by {what} over the server's lifetime (from the merged "
                            "latency sketches).", (f"{p}Index",), (
        Obj(f"{p}Index", 1, INDEX_RANGE, f"A number for the {what}, stable while the aggregator runs.",
            access="not-accessible"),
        Obj(f"{p}Name", 2, D, f"The {what}."),
        Obj(f"{p}Requests", 3, "Counter64", "Requests."),
        Obj(f"{p}AvgDuration", 4, "Gauge32", "Average duration.", "microseconds"),
        Obj(f"{p}P50Duration", 5, "Gauge32", "Median duration.", "microseconds"),
        Obj(f"{p}P95Duration", 6, "Gauge32", "95th percentile of the duration.", "microseconds"),
        Obj(f"{p}P99Duration", 7, "Gauge32", "99th percentile of the duration.", "microseconds"),
    ))


ROUTES = _aggregate_table("rsmpRouteTable", 6, "route")
TENANTS = _aggregate_table("rsmpTenantTable", 7, "tenant")
LOGS = Table("rsmpLogTable", 8, "The most recent log records of every worker (recent_logs of them), indexed by "
             "a sequence number that grows with every record.", ("rsmpLogIndex",), (
    Obj("rsmpLogIndex", 1, INDEX_RANGE, "The record's sequence number.", access="not-accessible"),
    Obj("rsmpLogTime", 2, "DateAndTime", "When the record was logged (UTC)."),
    Obj("rsmpLogLevel", 3, "Integer32", "The Python logging level (10 debug .. 50 critical)."),
    Obj("rsmpLogPid", 4, "Integer32", "The worker that logged it."),
    Obj("rsmpLogLogger", 5, D, "The logger's name."),
    Obj("rsmpLogMessage", 6, D, "The message (cut at 255 bytes)."),
))
OPTIMIZATION = Table("rsmpOptTable", 9, "Optimization (garbage collection on schedule or on demand) figures, one "
                     "row per live worker; memory is the worker's resident set size unless the column says "
                     "USS (private pages) or PSS (shared pages divided among their sharers).", ("rsmpOptPid",), (
    Obj("rsmpOptPid", 1, INDEX_RANGE, "The worker's process id.", access="not-accessible"),
    Obj("rsmpOptLast", 2, "DateAndTime", "When the worker last optimized."),
    Obj("rsmpOptCount", 3, "Counter32", "Optimizations run by the worker."),
    Obj("rsmpOptMemoryBefore", 4, "Gauge32", "Memory before the last optimization.", "KiB"),
    Obj("rsmpOptMemoryAfter", 5, "Gauge32", "Memory after the last optimization.", "KiB"),
    Obj("rsmpOptMemoryFreed", 6, "Gauge32", "Memory freed by the last optimization.", "KiB"),
    Obj("rsmpOptUssBefore", 7, "Gauge32", "USS before the last optimization.", "KiB"),
    Obj("rsmpOptUssAfter", 8, "Gauge32", "USS after the last optimization.", "KiB"),
    Obj("rsmpOptPssBefore", 9, "Gauge32", "PSS before the last optimization.", "KiB"),
    Obj("rsmpOptPssAfter", 10, "Gauge32", "PSS after the last optimization.", "KiB"),
    Obj("rsmpOptTrimmed", 11, "Gauge32", "Resident memory malloc_trim gave back in the last optimization.",
        "KiB"),
))
TABLES = (WORKERS, COUNTERS, GAUGES, RECORDS, ROUTES, TENANTS, LOGS, OPTIMIZATION)
SERVER_SUB, NOTIFY_OBJECTS_SUB = 1, 10

NOTIFY_OBJECTS = (
    Obj("rsmpNotifyPid", 1, "Integer32", "The process id of the worker concerned.",
        access="accessible-for-notify"),
    Obj("rsmpNotifyAge", 2, "Unsigned32", "gunicorn's age of the worker concerned.",
        access="accessible-for-notify"),
    Obj("rsmpNotifyValue", 3, "Unsigned32",
        "The measured value: an error rate in millionths, a latency in microseconds, a worker's memory in "
        "KiB, or its growth in KiB per hour.",
        access="accessible-for-notify"),
    Obj("rsmpNotifyThreshold", 4, "Unsigned32", "The configured threshold, in the unit of rsmpNotifyValue.",
        access="accessible-for-notify"),
    Obj("rsmpNotifyStarts", 5, "Unsigned32", "How often an aggregator started on this segment.",
        access="accessible-for-notify"),
)
NOTIFY = (
    Notification("rsmpWorkerDied", 1, ("rsmpNotifyPid", "rsmpNotifyAge"),
                 "A worker left the live set: any worker death (crash, kill, max_requests recycling or a "
                 "graceful stop), whether the master retired its slab or the aggregator found its process "
                 "gone."),
    Notification("rsmpAggregatorStarted", 2, ("rsmpNotifyStarts",),
                 "The aggregator (and its agent) started; rsmpNotifyStarts above 1 means a restart."),
    Notification("rsmpErrorRateHigh", 3, ("rsmpNotifyValue", "rsmpNotifyThreshold"),
                 "The share of 5xx responses over the threshold window rose above the configured "
                 "threshold (sent again only after it fell below)."),
    Notification("rsmpLatencyHigh", 4, ("rsmpNotifyValue", "rsmpNotifyThreshold"),
                 "The 95th percentile of the request duration over the threshold window rose above the "
                 "configured threshold (sent again only after it fell below)."),
    Notification("rsmpWorkerRecycled", 5, ("rsmpNotifyPid", "rsmpNotifyValue", "rsmpNotifyThreshold"),
                 "A worker's memory (rsmpNotifyValue, KiB) went over max_worker_memory (rsmpNotifyThreshold, "
                 "KiB): it finished its requests in progress and exited, and the master started another."),
    Notification("rsmpWorkerMemoryGrowing", 6, ("rsmpNotifyPid", "rsmpNotifyValue", "rsmpNotifyThreshold"),
                 "A worker's memory grew faster (rsmpNotifyValue, KiB per hour, over the history) than "
                 "leak_slope_threshold (rsmpNotifyThreshold): a leak is likely. Sent once per worker."),
)


def oid_of(base: tuple) -> dict:
    """Every named node's absolute OID (object nodes, not instances)."""
    out = {"rsmpNotifications": base + (NOTIFICATIONS,), "rsmpObjects": base + (OBJECTS,),
           "rsmpServer": base + (OBJECTS, SERVER_SUB), "rsmpNotifyObjects": base + (OBJECTS, NOTIFY_OBJECTS_SUB)}
    for obj in SERVER:
        out[obj.name] = base + (OBJECTS, SERVER_SUB, obj.sub)
    for obj in NOTIFY_OBJECTS:
        out[obj.name] = base + (OBJECTS, NOTIFY_OBJECTS_SUB, obj.sub)
    for table in TABLES:
        out[table.name] = base + (OBJECTS, table.sub)
        out[table.entry] = base + (OBJECTS, table.sub, 1)
        for col in table.columns:
            out[col.name] = base + (OBJECTS, table.sub, 1, col.sub)
    for n in NOTIFY:
        out[n.name] = base + (NOTIFICATIONS, n.sub)
    return out


# -- the SMIv2 text ---------------------------------------------------------------------------------
def _quote(text: str, indent: str = "        ") -> str:
    words, lines, line = text.replace('"', "'").split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > 66:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    lines.append(line)
    return indent + '"' + ("\n" + indent + " ").join(lines) + '"'


def _object(obj: Obj, parent: str) -> str:
    units = f'\n    UNITS       "{obj.units}"' if obj.units else ""
    return (f"{obj.name} OBJECT-TYPE\n    SYNTAX      {obj.syntax}{units}\n    MAX-ACCESS  {obj.access}\n"
            f"    STATUS      current\n    DESCRIPTION\n{_quote(obj.description)}\n"
            f"    ::= {{ {parent} {obj.sub} }}\n")


def _syntax_in_sequence(syntax: str) -> str:
    if syntax.startswith("INTEGER"):
        return "INTEGER"
    return syntax.split(" (")[0]


def _table(table: Table) -> str:
    entry, row = table.entry, table.row_type
    width = max(len(c.name) for c in table.columns) + 1
    seq = ",\n".join(f"    {c.name.ljust(width)}{_syntax_in_sequence(c.syntax)}" for c in table.columns)
    out = [f"{table.name} OBJECT-TYPE\n    SYNTAX      SEQUENCE OF {row}\n    MAX-ACCESS  not-accessible\n"
           f"    STATUS      current\n    DESCRIPTION\n{_quote(table.description)}\n"
           f"    ::= {{ rsmpObjects {table.sub} }}\n",
           f"{entry} OBJECT-TYPE\n    SYNTAX      {row}\n    MAX-ACCESS  not-accessible\n"
           f"    STATUS      current\n    DESCRIPTION\n"
           f"{_quote(table.entry_description or 'A row of ' + table.name + '.')}\n"
           f"    INDEX       {{ {', '.join(table.index)} }}\n    ::= {{ {table.name} 1 }}\n",
           f"{row} ::= SEQUENCE {{\n{seq}\n}}\n"]
    out += [_object(c, entry) for c in table.columns]
    return "\n".join(out)


def _group(name: str, objects: list, description: str, kind: str = "OBJECT-GROUP") -> str:
    keyword = "OBJECTS" if kind == "OBJECT-GROUP" else "NOTIFICATIONS"
    body = ",\n".join(f"        {o}" for o in objects)
    return (f"{name} {kind}\n    {keyword} {{\n{body}\n    }}\n    STATUS      current\n    DESCRIPTION\n"
            f"{_quote(description)}\n    ::= {{ rsmpGroups {name_sub[name]} }}\n")


name_sub = {"rsmpServerGroup": 1, "rsmpTablesGroup": 2, "rsmpNotifyObjectsGroup": 3,
            "rsmpNotificationsGroup": 4}


def _root(base: tuple) -> tuple:
    """``(the module identity's value, extra IMPORTS, intermediate node definitions)`` for ``base``."""
    if base[:8] == (1, 3, 6, 1, 4, 1, 8072, 9999) and len(base) == 9:
        return (f"{{ netSnmpExperimental {base[8]} }}",
                "\n    netSnmpExperimental\n        FROM NET-SNMP-MIB", "")
    if base[:6] == (1, 3, 6, 1, 4, 1) and len(base) == 7:
        return f"{{ enterprises {base[6]} }}", "", ""
    # Any other base: name the arcs below the deepest node the imports define, so no node is implicit.
    parent, rest = ("enterprises", base[6:]) if base[:6] == (1, 3, 6, 1, 4, 1) else ("iso", base[1:])
    arcs = []
    for i, sub in enumerate(rest[:-1], 1):
        arcs.append(f"rsmpArc{i} OBJECT IDENTIFIER ::= {{ {parent} {sub} }}\n")
        parent = f"rsmpArc{i}"
    return f"{{ {parent} {rest[-1]} }}", "", "".join(arcs) + ("\n" if arcs else "")


def render_mib(base: tuple = DEFAULT_BASE, version: str = "") -> str:
    """The ROCKSTAR-MP-MIB module, with its root at ``base``."""
    root, imports_extra, arcs = _root(base)
    readable = [c.name for t in TABLES for c in t.columns if c.access != "not-accessible"]
    parts = [f"""{MODULE} DEFINITIONS ::= BEGIN

--
-- rockstar-mp: monitoring of pre-fork Python servers (gunicorn). Served by the aggregator's SNMP
-- agent (SNMPv2c and SNMPv3, read-only). Generated by rockstar_mp.aggregator.snmp.mibdef; the root
-- below is snmp_base_oid ({'.'.join(map(str, base))}).
--

IMPORTS
    MODULE-IDENTITY, OBJECT-TYPE, NOTIFICATION-TYPE,{' enterprises,' if 'enterprises' in root + arcs else ''}
    Integer32, Unsigned32, Counter32, Counter64, Gauge32, TimeTicks
        FROM SNMPv2-SMI
    DisplayString, DateAndTime
        FROM SNMPv2-TC
    MODULE-COMPLIANCE, OBJECT-GROUP, NOTIFICATION-GROUP
        FROM SNMPv2-CONF{imports_extra};

rockstarMpMIB MODULE-IDENTITY
    LAST-UPDATED "202611300000Z"
    ORGANIZATION "rockstar-mp"
    CONTACT-INFO
        "The rockstar-mp maintainers; see the project's README."
    DESCRIPTION
        "Monitoring of a pre-fork Python server: the server's figures, its live workers, merged
         counters and gauges, recent workload and log records, aggregates by route and tenant,
         and notifications for worker deaths, aggregator starts and crossed thresholds."
    REVISION     "202611300000Z"
    DESCRIPTION
        "USS, PSS and trimmed memory of the optimizations; memory recycles (rsmpMemoryRecycles,
         rsmpWorkerRecycling, rsmpWorkerRecycled); memory growth (rsmpWorkerMemorySlope,
         rsmpWorkerMemoryGrowing)."
    REVISION     "202611270000Z"
    DESCRIPTION
        "First version."
    ::= {root}

{arcs}rsmpNotifications  OBJECT IDENTIFIER ::= {{ rockstarMpMIB {NOTIFICATIONS} }}
rsmpObjects        OBJECT IDENTIFIER ::= {{ rockstarMpMIB {OBJECTS} }}
rsmpConformance    OBJECT IDENTIFIER ::= {{ rockstarMpMIB {CONFORMANCE} }}
rsmpServer         OBJECT IDENTIFIER ::= {{ rsmpObjects {SERVER_SUB} }}
rsmpNotifyObjects  OBJECT IDENTIFIER ::= {{ rsmpObjects {NOTIFY_OBJECTS_SUB} }}

-- The server as a whole

"""]
    parts += [_object(o, "rsmpServer") + "\n" for o in SERVER]
    for table in TABLES:
        parts.append(f"-- {table.name}\n\n" + _table(table) + "\n")
    parts.append("-- Objects sent with the notifications\n\n")
    parts += [_object(o, "rsmpNotifyObjects") + "\n" for o in NOTIFY_OBJECTS]
    parts.append("-- Notifications\n\n")
    for n in NOTIFY:
        objs = ", ".join(n.objects)
        parts.append(f"{n.name} NOTIFICATION-TYPE\n    OBJECTS     {{ {objs} }}\n    STATUS      current\n"
                     f"    DESCRIPTION\n{_quote(n.description)}\n    ::= {{ rsmpNotifications {n.sub} }}\n\n")
    parts.append("-- Conformance\n\nrsmpCompliances OBJECT IDENTIFIER ::= { rsmpConformance 1 }\n"
                 "rsmpGroups      OBJECT IDENTIFIER ::= { rsmpConformance 2 }\n\n")
    parts.append(_group("rsmpServerGroup", [o.name for o in SERVER], "The server's scalars.") + "\n")
    parts.append(_group("rsmpTablesGroup", readable, "The columns of the tables.") + "\n")
    parts.append(_group("rsmpNotifyObjectsGroup", [o.name for o in NOTIFY_OBJECTS],
                        "Objects sent with the notifications.") + "\n")
    parts.append(_group("rsmpNotificationsGroup", [n.name for n in NOTIFY], "The notifications.",
                        "NOTIFICATION-GROUP") + "\n")
    parts.append("""rsmpCompliance MODULE-COMPLIANCE
    STATUS      current
    DESCRIPTION
        "An agent implementing ROCKSTAR-MP-MIB serves every group."
    MODULE      -- this module
        MANDATORY-GROUPS { rsmpServerGroup, rsmpTablesGroup, rsmpNotifyObjectsGroup,
                           rsmpNotificationsGroup }
    ::= { rsmpCompliances 1 }

END
""")
    return "".join(parts)

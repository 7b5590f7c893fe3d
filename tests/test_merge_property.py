"""Property test of the merge: random operations across real workers, against a plain-Python model.

A worker is a real process (``tests/apps/merge_worker.py``, started from a forkserver): the test claims
a slab for it, as gunicorn's master does, and it attaches with ``attach_worker``; then it declares and
updates metrics, records requests with the workload recorder (ring and latency sketches) and fills its
catalogue when told. The state machine starts workers, stops them cleanly (their slab retired) or kills
them with SIGKILL (the aggregator must find the dead pid), folds dead workers (or leaves them retired but
unfolded), reuses freed slabs, drains the record rings and restarts the aggregator (a new ``Merger`` and
``RingDrain`` on the same segment). After every step the merge must equal what the model computes:

- ``render_json(merger.merge())``, exactly: amounts are integers or dyadic fractions, so every sum is exact;
- each live worker's pid and refused declarations (``catalogue_full``): once a worker's catalogue is full,
  every new series is refused and counted, and its existing series keep counting;
- the workload aggregates read from the merged latency sketches: requests and seconds exact, every quantile
  within ``RELATIVE_ERROR`` of the exact one (nearest rank);
- the drained records (the aggregator's most recent ones, by start time) and the records dropped when a
  ring wrapped before a drain.
"""
from __future__ import annotations

import math
import multiprocessing
import os
import shutil
import signal
import tempfile
from collections import deque

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from rockstar_mp.aggregator.exposition import render_json
from rockstar_mp.aggregator.merge import Merger
from rockstar_mp.aggregator.workload import RingDrain, aggregates, sketch_totals
from rockstar_mp.segment import FREE, LIVE, RETIRED, Geometry, NoFreeSlab, Segment
from rockstar_mp.segment.layout import Header, Slot
from rockstar_mp.sketch import RELATIVE_ERROR
from tests.apps import merge_worker

# Four slabs, so workers often run out of them (NoFreeSlab) and freed slabs get reused. A slab holds
# every series a worker makes here (its metrics, its sketches, the runtime's own) until ``flood`` fills
# it; the retired region holds every series ever folded. Eight record slots: rings wrap between drains.
GEOMETRY = Geometry(n_slabs=4, slab_max_series=256, slab_heap_bytes=32768, slab_max_values=2048,
                    retired_max_series=1024, retired_heap_bytes=65536, retired_max_values=4096,
                    record_slots=8, log_slots=4)
RECENT_RECORDS = 40  # the aggregator keeps this many records

# Workers start from a clean, single-threaded server process, not from the test process.
WORKERS = multiprocessing.get_context("forkserver")
WORKERS.set_forkserver_preload(["tests.apps.merge_worker"])
ANSWER_SECONDS = 30.0

# A fixed pool of metric definitions: every worker runs the same code, so a name always means the same
# kind, labels, mode and buckets (and so the same series keys in every slab).
# name -> (kind, labelnames, mode or buckets)
POOL = {
    "c.plain": ("counter", (), None),
    "c.lab": ("counter", ("method",), None),
    "g.sum": ("gauge", (), "sum"),
    "g.sum_lab": ("gauge", ("k",), "sum"),
    "g.max": ("gauge", ("k",), "max"),
    "g.min": ("gauge", (), "min"),
    "g.last": ("gauge", (), "last"),
    "g.last_lab": ("gauge", ("k",), "last"),
    "h.plain": ("histogram", (), (0.5, 1.0, 4.0)),
    "h.lab": ("histogram", ("route",), (1.0, 2.0)),
    merge_worker.FLOOD: ("counter", ("i",), None),
}
NAMES = sorted(POOL)
GAUGES = [n for n in NAMES if POOL[n][0] == "gauge"]
LABEL_VALUES = ("a", "b")

# Exact in float64 when summed in any order: small integers and dyadic fractions.
AMOUNTS = st.one_of(st.integers(0, 1000), st.sampled_from([0.5, 0.25, 0.125, 2.75]))
GAUGE_VALUES = st.one_of(st.integers(-100, 100), st.sampled_from([-0.5, 0.25, 1.5, 1e6]))
OBSERVATIONS = st.sampled_from([-1.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 8.0, 100.0])

# Requests: durations of at least the sketch's 1 us floor, dyadic so that their sums are exact.
REQUESTS = st.lists(st.tuples(st.sampled_from(["/", "/items/{id}", "/slow"]), st.sampled_from([200, 404, 503]),
                              st.sampled_from([2.0 ** -19, 2.0 ** -16, 2.0 ** -12, 2.0 ** -10, 2.0 ** -8,
                                               0.03125, 0.125, 0.25, 0.5, 0.75, 1.5, 3.0]),
                              st.sampled_from(["", "acme"])), min_size=1, max_size=12)


def json_key(name: str, labelvalues: tuple) -> str:
    labelnames = POOL[name][1]
    if not labelnames:
        return name
    return name + "{" + ",".join(f'{n}="{v}"' for n, v in zip(labelnames, labelvalues, strict=True)) + "}"


class SimWorker:
    """One worker process, the slab tenancy it holds, and the model of what it wrote there."""

    def __init__(self, seg: Segment, slab: int, generation: int, run_dir: str) -> None:
        self.slab = slab
        self.generation = generation
        self.conn, their_end = WORKERS.Pipe()
        self.process = WORKERS.Process(target=merge_worker.serve, daemon=True,
                                       args=(their_end, seg.path, slab, generation, run_dir))
        self.process.start()
        their_end.close()
        self.own_families = self.call("hello")  # what the runtime declared at attach (not the model's)
        self.pid = self.process.pid
        self.running = True
        self.full = False  # its catalogue refused a series: every new one is refused from then on
        self.refused = 0  # series its catalogue refused (the slab's catalogue_full)
        self.families: set = set()
        # Model: (name, labelvalues) -> values. Counter: [v]; gauge: [v, seq of the last set or None];
        # histogram: [per-bucket counts (not cumulative) ..., +Inf count, sum].
        self.values: dict = {}
        self.written = 0  # records written to its ring in this tenancy
        self.drained: int | None = None  # the aggregator's position in its ring; None: not seen yet
        self.records: list = []  # every record written, as the aggregator returns it

    def call(self, command: str, *args):
        """Send a command; its result, or the string "full" when the catalogue refused a new series."""
        if command != "hello":
            self.conn.send((command, args))
        if not self.conn.poll(ANSWER_SECONDS):
            raise AssertionError(f"worker {self.process.pid} did not answer {command!r}")
        status, result = self.conn.recv()
        assert status != "error", result
        return "full" if status == "full" else result

    def create(self, key: tuple, command: str, *args) -> tuple[list | None, object]:
        """Run ``command``, which makes the series ``key`` (name, label values) if it is new:
        ``(the model's values, or None if the catalogue refused the series; the command's result)``."""
        new = key not in self.values
        answer = self.call(command, *args)
        if answer == "full":
            assert new and self.full, f"{key} refused with room in the catalogue"
            self.refused += 1
            return None, None
        assert not (new and self.full), f"{key} made in a full catalogue"
        if new:
            kind, _, extra = POOL[key[0]]
            self.values[key] = ([0.0] * (len(extra) + 2) if kind == "histogram"
                                else [0.0, None] if kind == "gauge" else [0.0])
        return self.values[key], answer

    def stop(self, how: str) -> None:
        """``exit`` (its own choice) or ``kill`` (SIGKILL); either way the process is reaped."""
        if how == "exit":
            self.call("exit")
        else:
            os.kill(self.pid, signal.SIGKILL)
        self.process.join(ANSWER_SECONDS)
        assert self.process.exitcode is not None, f"worker {self.pid} did not end"
        self.conn.close()
        self.running = False


def bucket_overflow(snap) -> float:
    """Requests whose latency went to a neighbouring bucket for want of room in their dimension's budget
    (``rockstar.workload.overflow{dimension="bucket"}``, merged)."""
    return sum(snap.totals[info.cell] for info in snap.series
               if info.cell >= 0 and info.key.name == "rockstar.workload.overflow"
               and info.key.labelvalues == ("bucket",))


class MergeMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="rockstar-prop-")
        self.seg = Segment.create(self.tmp, GEOMETRY)
        self.merger = Merger(self.seg)
        self.rings = RingDrain(self.seg, RECENT_RECORDS, 0)
        self.workers: list[SimWorker] = []  # every worker ever started (dead ones keep their model)
        # Model of the slab table: state and generation per slab.
        self.slab_state = [FREE] * GEOMETRY.n_slabs
        self.slab_gen = [0] * GEOMETRY.n_slabs
        self.claim_failures = 0
        self.set_seq = 0  # order of gauge updates, for mode "last"
        self.last_stamp = 0.0
        self.clock = 1.7e9  # the start time of the next request (increasing: the drain sorts by it)
        self.recent: deque = deque(maxlen=RECENT_RECORDS)  # what the aggregator's drain should hold
        self.records_dropped = 0

    def teardown(self) -> None:
        for worker in self.workers:
            if worker.running:
                worker.stop("kill")
        path = self.seg.path
        self.workers.clear()
        self.merger = None
        self.rings = None
        self.seg.close()
        if os.path.exists(path):
            os.unlink(path)
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- helpers ----------------------------------------------------------------------------------
    def live(self) -> list[SimWorker]:
        """Workers still running (the ones that can be told to do something)."""
        return [w for w in self.workers if w.running]

    def holding(self) -> list[SimWorker]:
        """Workers whose slab is still live: running, or killed and not yet found dead."""
        return [w for w in self.workers if self.slab_state[w.slab] == LIVE and self.slab_gen[w.slab] == w.generation]

    def in_rings(self) -> list[SimWorker]:
        """Workers whose slab the aggregator still drains: live, or retired and not yet folded."""
        return [w for w in self.workers
                if self.slab_state[w.slab] in (LIVE, RETIRED) and self.slab_gen[w.slab] == w.generation]

    def has_live(self) -> bool:
        return any(w.running for w in self.workers)

    def has_live_with(self, kinds) -> bool:
        return any(POOL[n][0] in kinds for w in self.live() for n in w.families)

    def pick_worker(self, data) -> SimWorker:
        return data.draw(st.sampled_from(self.live()), label="worker")

    def pick_family(self, data, worker: SimWorker, kind: str) -> str | None:
        names = [n for n in worker.families if POOL[n][0] == kind]
        if not names:
            return None
        return data.draw(st.sampled_from(sorted(names)), label="name")

    # -- operations -------------------------------------------------------------------------------
    @initialize(declare_all=st.booleans())
    def first_worker(self, declare_all) -> None:
        self.start_worker(declare_all)

    @rule(declare_all=st.booleans())
    def start_worker(self, declare_all) -> None:
        """A worker starts; with ``declare_all`` it declares every family at once (module level)."""
        free = [i for i, s in enumerate(self.slab_state) if s == FREE]
        try:
            slab, generation = self.seg.claim_slab()
        except NoFreeSlab:
            assert not free, "claim_slab refused while the model has a free slab"
            self.claim_failures += 1
            event("start refused: NoFreeSlab")
            return
        assert free, "claim_slab succeeded while the model has no free slab"
        assert slab == free[0], "claim_slab takes the lowest free slab"  # so freed slabs get reused
        assert generation == self.slab_gen[slab] + 1
        if generation > 1:
            event("slab reused")
        self.slab_state[slab] = LIVE
        self.slab_gen[slab] = generation
        worker = SimWorker(self.seg, slab, generation, self.tmp)
        self.workers.append(worker)
        if declare_all:
            for name in NAMES:
                self._declare(worker, name)

    @rule(n=st.integers(2, 5), declare_all=st.booleans())
    def start_workers(self, n, declare_all) -> None:
        for _ in range(n):
            self.start_worker(declare_all)

    def _declare(self, worker: SimWorker, name: str) -> None:
        if name in worker.families:
            return  # declared once per process (a second declaration raises; see test_segment)
        kind, labelnames, extra = POOL[name]
        if labelnames:  # no series yet: nothing to refuse
            assert worker.call("declare", name, kind, labelnames, extra) is None
            worker.families.add(name)
            return
        # an unlabelled family is its own series: it exists at zero now (unless the catalogue refuses it)
        model, _ = worker.create((name, ()), "declare", name, kind, labelnames, extra)
        if model is not None:
            worker.families.add(name)

    @precondition(lambda self: self.has_live())
    @rule(data=st.data(), name=st.sampled_from(NAMES))
    def declare(self, data, name) -> None:
        self._declare(self.pick_worker(data), name)

    @precondition(lambda self: self.has_live_with({"counter", "gauge", "histogram"}))
    @rule(data=st.data(), labelvalue=st.sampled_from(LABEL_VALUES))
    def create_child(self, data, labelvalue) -> None:
        """labels(...) alone creates a series at zero (it must show, with zero, in the merge)."""
        worker = self.pick_worker(data)
        labelled = sorted(n for n in worker.families if POOL[n][1])
        if labelled:
            key = (data.draw(st.sampled_from(labelled), label="name"), (labelvalue,))
            worker.create(key, "touch", *key)

    @staticmethod
    def _labels(name: str, labelvalue: str) -> tuple:
        return (labelvalue,) if POOL[name][1] else ()

    @precondition(lambda self: self.has_live_with({"counter"}))
    @rule(data=st.data(), amount=AMOUNTS, labelvalue=st.sampled_from(LABEL_VALUES))
    def inc_counter(self, data, amount, labelvalue) -> None:
        worker = self.pick_worker(data)
        name = self.pick_family(data, worker, "counter")
        if name is None:
            return
        key = (name, self._labels(name, labelvalue))
        model, _ = worker.create(key, "inc", *key, amount)
        if model is not None:
            model[0] += amount

    @precondition(lambda self: self.has_live_with({"gauge"}))
    @rule(data=st.data(), value=GAUGE_VALUES, labelvalue=st.sampled_from(LABEL_VALUES),
          how=st.sampled_from(["set", "inc", "dec"]))
    def update_gauge(self, data, value, labelvalue, how) -> None:
        worker = self.pick_worker(data)
        name = self.pick_family(data, worker, "gauge")
        if name is not None:
            self._update_gauge(worker, name, labelvalue, how, value)

    @precondition(lambda self: self.has_live_with({"gauge"}))
    @rule(data=st.data(), name=st.sampled_from(GAUGES), labelvalue=st.sampled_from(LABEL_VALUES))
    def update_gauge_everywhere(self, data, name, labelvalue) -> None:
        """Every live worker that declared ``name`` updates it, in a random order (the merge by mode
        then decides between several live readings)."""
        workers = [w for w in self.live() if name in w.families]
        for worker in data.draw(st.permutations(workers), label="order"):
            value = data.draw(GAUGE_VALUES, label="value")
            how = data.draw(st.sampled_from(["set", "inc", "dec"]), label="how")
            self._update_gauge(worker, name, labelvalue, how, value)

    def _update_gauge(self, worker: SimWorker, name: str, labelvalue: str, how: str, value) -> None:
        # Mode "last" keeps the reading with the newest time.time() stamp: the worker waits until the
        # clock has passed the last stamp, so "newest stamp" and "most recent update" (the model's
        # set_seq) are the same.
        last = POOL[name][2] == "last"
        key = (name, self._labels(name, labelvalue))
        model, stamp = worker.create(key, "gauge", *key, how, value, self.last_stamp if last else None)
        if model is None:
            return
        model[0] = float(value) if how == "set" else model[0] + value if how == "inc" else model[0] - value
        if last:
            assert stamp > self.last_stamp, "the clock did not advance between two 'last' updates"
            self.last_stamp = stamp
        self.set_seq += 1
        model[1] = self.set_seq

    @precondition(lambda self: self.has_live_with({"histogram"}))
    @rule(data=st.data(), amount=OBSERVATIONS, labelvalue=st.sampled_from(LABEL_VALUES))
    def observe(self, data, amount, labelvalue) -> None:
        worker = self.pick_worker(data)
        name = self.pick_family(data, worker, "histogram")
        if name is None:
            return
        key = (name, self._labels(name, labelvalue))
        model, _ = worker.create(key, "observe", *key, amount)
        if model is None:
            return
        bounds = POOL[name][2]
        bucket = next((i for i, b in enumerate(bounds) if amount <= b), len(bounds))
        model[bucket] += 1
        model[-1] += amount

    @precondition(lambda self: any(not w.full for w in self.live()))
    @rule(data=st.data(), requests=REQUESTS)
    def record(self, data, requests) -> None:
        """A worker serves requests: one record each in its ring, and its latency sketches."""
        worker = data.draw(st.sampled_from([w for w in self.live() if not w.full]), label="worker")
        batch = []
        for route, status, seconds, tenant in requests:
            self.clock += 0.001
            batch.append((route, status, seconds, self.clock, tenant))
        assert worker.call("record", batch) is None
        for route, status, seconds, start, tenant in batch:
            worker.records.append((worker.pid, route, status, tenant, seconds, start))
        worker.written += len(batch)

    @precondition(lambda self: any(not w.full for w in self.live()))
    @rule(data=st.data())
    def flood(self, data) -> None:
        """A worker declares series until its catalogue is full: the last one is refused and counted."""
        worker = data.draw(st.sampled_from([w for w in self.live() if not w.full]), label="worker")
        added = worker.call("flood")  # children "0", "1", ... each counted once (a worker floods once)
        assert added > 0
        worker.families.add(merge_worker.FLOOD)
        for i in range(added):
            worker.values[(merge_worker.FLOOD, (str(i),))] = [1.0]
        worker.full = True
        worker.refused += 1
        event("a catalogue filled")

    @precondition(lambda self: self.has_live())
    @rule(data=st.data(), collect=st.booleans(), how=st.sampled_from(["exit", "kill"]))
    def stop_worker(self, data, collect, how) -> None:
        """A worker exits and its slab is retired by the master; or it is killed (SIGKILL) and nobody
        retires it: the aggregator must find its pid dead. Sometimes the aggregator then ticks."""
        worker = self.pick_worker(data)
        worker.stop(how)
        if how == "exit":
            assert self.seg.retire_slab(worker.slab, worker.generation)
            assert not self.seg.retire_slab(worker.slab, worker.generation)  # a tenancy ends once
            self.slab_state[worker.slab] = RETIRED
        if collect:
            self.tick()

    @precondition(lambda self: self.has_live())
    @rule(data=st.data(), n=st.integers(2, 4), collect=st.booleans())
    def stop_workers(self, data, n, collect) -> None:
        """Several workers exit (a reload), ticked over or not."""
        for _ in range(n):
            if self.has_live():
                self.stop_worker(data, False, "exit")
        if collect:
            self.tick()

    def _drain(self) -> None:
        """The aggregator reads every ring it can still see; the model says what it should get."""
        self.rings.drain()
        batch = []
        for worker in self.in_rings():
            since = worker.drained
            if since is None:  # first sight: what the ring still holds, nothing counted as dropped
                since = max(0, worker.written - GEOMETRY.record_slots)
            start = max(since, worker.written - GEOMETRY.record_slots)
            self.records_dropped += start - since
            batch.extend(worker.records[start:worker.written])
            worker.drained = worker.written
        self.recent.extend(sorted(batch, key=lambda r: r[5]))
        if self.records_dropped:
            event("records dropped: a ring wrapped before a drain")

    @rule()
    def drain(self) -> None:
        self._drain()

    @rule()
    def tick(self) -> None:
        """The aggregator's tick: drain the rings, then retire the slabs of dead pids and fold every
        retired slab."""
        self._drain()
        found_dead = [w for w in self.holding() if not w.running]
        retired = [i for i, s in enumerate(self.slab_state) if s == RETIRED]
        assert self.merger.collect_dead() == len(retired) + len(found_dead)
        if found_dead:
            event("a killed worker found dead")
        for i in retired + [w.slab for w in found_dead]:
            self.slab_state[i] = FREE

    @precondition(lambda self: self.slab_state.count(RETIRED) == 1 and not
                  any(not w.running for w in self.holding()))
    @rule(after_flip=st.booleans(), merge_first=st.booleans())
    def crash_during_fold(self, after_flip, merge_first) -> None:
        """The aggregator dies in the middle of folding the one retired slab, and a new one starts.

        Before the flip: the retired copy it wrote is the inactive one, so the old totals stand and the
        slab is still retired (folded by the next aggregator). After the flip (before the slab was
        reset and freed): the totals include the slab, which is still retired with the same generation;
        the copy's (slab, generation) marker must stop the next aggregator from folding it again, and
        its merge() from summing it again before that fold (``merge_first``). The new aggregator folds
        right away, as ``AggregatorState.tick`` does on start: a worker retiring before that fold can
        make it count the slab twice (see test_segment for that bug).
        """
        slab = self.slab_state.index(RETIRED)
        body = GEOMETRY.slab_offset(slab)
        self._drain()  # the tick drains before it folds
        saved = bytes(self.seg.buf[body:body + GEOMETRY.slab.size])
        active = Header.retired_active.get(self.seg.buf)
        assert self.merger.collect_dead() == 1
        assert self.seg.slot(slab).state == FREE
        with self.seg.locked():  # undo what came after the crash point
            self.seg.buf[body:body + GEOMETRY.slab.size] = saved
            Slot.state.set(self.seg.buf, RETIRED, GEOMETRY.table_entry(slab))
            if not after_flip:
                Header.retired_active.set(self.seg.buf, active)
        event(f"crash during a fold, after the flip: {after_flip}")
        self._new_aggregator()
        if after_flip:
            if merge_first:
                assert self.observed(self.merger.merge()) == self.expected()
            assert self.merger.collect_dead() in (0, 1)  # 0 if the new Merger finished the fold
            self.slab_state[slab] = FREE

    def _new_aggregator(self) -> None:
        """A new aggregator process: its retired totals come from the segment, nothing in memory; its
        drain starts with what the rings still hold."""
        self.merger = Merger(self.seg)
        self.rings = RingDrain(self.seg, RECENT_RECORDS, 0)
        self.recent.clear()
        for worker in self.workers:
            worker.drained = None

    @rule()
    def restart_aggregator(self) -> None:
        if RETIRED in self.slab_state:
            event("aggregator restart with an unfolded retired slab")
        if any(not w.running for w in self.workers):
            event("aggregator restart after a worker died")
        self._new_aggregator()

    @rule()
    def merge_twice(self) -> None:
        """Merging is read-only: merging again changes nothing."""
        first = render_json(self.merger.merge())
        assert render_json(self.merger.merge()) == first

    # -- the check --------------------------------------------------------------------------------
    def expected(self) -> dict:
        counters: dict = {}
        histograms: dict = {}
        gauges: dict = {}
        gauge_readings: dict = {}
        holding = {id(w) for w in self.holding()}
        for worker in self.workers:
            for (name, lv), values in worker.values.items():
                kind, labelnames, extra = POOL[name]
                key = json_key(name, lv)
                if kind == "counter":
                    # live and dead workers alike (a dead worker's count is kept)
                    counters[key] = counters.get(key, 0.0) + values[0]
                    if labelnames:
                        counters[name] = counters.get(name, 0.0) + values[0]
                elif kind == "histogram":
                    acc = histograms.setdefault(key, [0.0] * len(values))
                    for i, v in enumerate(values):
                        acc[i] += v
                elif id(worker) in holding:  # gauges: workers whose slab is live only
                    gauge_readings.setdefault((name, key), []).append(values)
        out_h = {}
        for key, acc in histograms.items():
            name = key.split("{")[0]
            bounds = POOL[name][2]
            cumulative, buckets = 0.0, {}
            for bound, count in zip(list(bounds) + [math.inf], acc[:-1], strict=True):
                cumulative += count
                buckets["+Inf" if bound == math.inf else repr(float(bound))] = cumulative
            out_h[key] = {"count": cumulative, "sum": acc[-1], "buckets": buckets}
        for (name, key), readings in gauge_readings.items():
            mode = POOL[name][2]
            values = [r[0] for r in readings]
            if mode == "sum":
                gauges[key] = sum(values)
            elif mode == "max":
                gauges[key] = max(values)
            elif mode == "min":
                gauges[key] = min(values)
            else:  # last: the most recently updated live reading; 0 if no live worker updated it
                updated = [r for r in readings if r[1] is not None]
                if len(updated) > 1:
                    event("'last' gauge chosen among several live workers")
                gauges[key] = max(updated, key=lambda r: r[1])[0] if updated else 0.0
        return {"counters": counters, "gauges": gauges, "histograms": out_h}

    def observed(self, snap) -> dict:
        """``render_json(snap)`` without the families the runtime declares in every worker (the garbage
        collections, the thread count: the model leaves them out)."""
        theirs = {name for w in self.workers for name in w.own_families}
        return {section: {k: v for k, v in values.items() if k.split("{")[0] not in theirs}
                for section, values in render_json(snap).items()}

    @invariant()
    def merge_matches_model(self) -> None:
        snap = self.merger.merge()
        assert self.observed(snap) == self.expected()
        assert snap.claim_failures == self.claim_failures == Header.claim_failures.get(self.seg.buf)
        holding = self.holding()
        assert sorted((w.slot.slab, w.slot.pid) for w in snap.workers) == sorted((w.slab, w.pid) for w in holding)
        assert {w.slot.pid: w.catalogue_full for w in snap.workers} == {w.pid: w.refused for w in holding}
        self.check_sketches(snap)

    def check_sketches(self, snap) -> None:
        """Requests and seconds by route, status class and tenant exact; quantiles within the sketch's
        relative error of the exact ones (nearest rank)."""
        totals = sketch_totals(snap)
        sketches, summaries = aggregates(snap, totals, raw=True), aggregates(snap, totals)
        durations: dict = {}
        for worker in self.workers:
            for _pid, route, status, tenant, seconds, _start in worker.records:
                for dim, value in (("route", route), ("status", f"{status // 100}xx"), ("tenant", tenant or "-")):
                    durations.setdefault((dim, value), []).append(seconds)
        assert {(dim, value) for dim in sketches for value in sketches[dim]} == set(durations)
        moved = bucket_overflow(snap)  # requests counted in a neighbouring bucket: a dimension's budget was spent
        if moved:
            event("latency buckets past a dimension's budget")
        for (dim, value), exact in durations.items():
            sketch, spent = sketches[dim][value]
            assert (sum(sketch.values()), spent) == (len(exact), sum(exact))
            if moved:
                continue  # counts and seconds stay exact; quantiles are within a bucket only where it had room
            ordered = sorted(exact)
            for name, q in (("p50_ms", 0.5), ("p95_ms", 0.95), ("p99_ms", 0.99)):
                want = ordered[max(1, math.ceil(q * len(ordered) - 1e-9)) - 1] * 1000
                got = summaries[dim][value][name]
                assert abs(got - want) <= RELATIVE_ERROR * want + 0.0005, (dim, value, name, got, ordered)

    @invariant()
    def records_match_model(self) -> None:
        got = [(r.pid, r.route, r.status, r.tenant, r.duration, r.start) for r in self.rings.records]
        assert got == list(self.recent)
        assert self.rings.records_dropped == self.records_dropped

    @invariant()
    def slab_table_matches_model(self) -> None:
        for slot in self.seg.slots():
            assert slot.state == self.slab_state[slot.slab]
            if slot.state != FREE:
                assert slot.generation == self.slab_gen[slot.slab]


MergeMachine.TestCase.settings = settings(
    max_examples=80, stateful_step_count=60, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
TestMerge = MergeMachine.TestCase


def test_parse_memo_tells_equal_length_catalogues_apart_and_forgets_the_oldest():
    from rockstar_mp.aggregator.merge import MEMO_SIZE, _ParseMemo

    memo = _ParseMemo()
    memo.put(b"abc", ("first",))
    memo.put(b"abd", ("second",))  # same length, other bytes
    assert memo.get(b"abc") == ("first",) and memo.get(b"abd") == ("second",)
    assert memo.get(b"abe") is None and memo.get(b"ab") is None
    for i in range(MEMO_SIZE - 1):
        memo.put(b"x%03d" % i, (i,))
    assert memo.get(b"abc") is None  # the oldest went
    assert memo.get(b"abd") == ("second",) and memo.get(b"x000") == (0,)

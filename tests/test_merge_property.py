"""Property test of the merge: random operations across simulated workers, against a plain-Python model.

A simulated worker is what ``attach_worker`` does, minus the fork: ``seg.claim_slab()``, its own
``Registry`` bound to a ``SlabStore`` on that slab, and metrics declared in that registry. The state
machine starts and kills workers, declares and updates metrics, folds dead workers (or leaves them
retired but unfolded), reuses freed slabs and restarts the aggregator (a new ``Merger`` on the same
segment). After every step ``render_json(merger.merge())`` must equal what the model computes, exactly:
amounts are integers or dyadic fractions, so every sum is exact in float64.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
import time

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from rockstar_mp.aggregator.exposition import render_json
from rockstar_mp.aggregator.merge import Merger
from rockstar_mp.metrics import Counter, Gauge, Histogram, Registry
from rockstar_mp.segment import FREE, LIVE, RETIRED, Geometry, NoFreeSlab, Segment, process_start
from rockstar_mp.segment.layout import Header, Slot
from rockstar_mp.worker.attach import SlabStore

# Four slabs, so workers often run out of them (NoFreeSlab) and freed slabs get reused.
GEOMETRY = Geometry(n_slabs=4, slab_max_series=64, slab_heap_bytes=8192, slab_max_values=1024,
                    retired_max_series=256, retired_heap_bytes=32768, retired_max_values=4096)

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
}
NAMES = sorted(POOL)
GAUGES = [n for n in NAMES if POOL[n][0] == "gauge"]
LABEL_VALUES = ("a", "b")

# Exact in float64 when summed in any order: small integers and dyadic fractions.
AMOUNTS = st.one_of(st.integers(0, 1000), st.sampled_from([0.5, 0.25, 0.125, 2.75]))
GAUGE_VALUES = st.one_of(st.integers(-100, 100), st.sampled_from([-0.5, 0.25, 1.5, 1e6]))
OBSERVATIONS = st.sampled_from([-1.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 8.0, 100.0])


def declare_metric(name: str, registry: Registry):
    kind, labelnames, extra = POOL[name]
    doc = f"doc of {name}"
    if kind == "counter":
        return Counter(name, doc, labelnames, registry=registry)
    if kind == "gauge":
        return Gauge(name, doc, labelnames, mode=extra, registry=registry)
    return Histogram(name, doc, labelnames, buckets=extra, registry=registry)


def json_key(name: str, labelvalues: tuple) -> str:
    labelnames = POOL[name][1]
    if not labelnames:
        return name
    return name + "{" + ",".join(f'{n}="{v}"' for n, v in zip(labelnames, labelvalues)) + "}"


class SimWorker:
    """One simulated worker: its slab tenancy, registry and families, and the model of its values."""

    def __init__(self, seg: Segment, slab: int, generation: int) -> None:
        self.slab = slab
        self.generation = generation
        self.registry = Registry()
        seg.bind_slab(slab, os.getpid(), process_start(os.getpid()))  # as attach_worker names itself
        assert self.registry.bind(SlabStore(seg, slab)) == []
        self.families: dict = {}  # name -> family object
        self.alive = True
        # Model: (name, labelvalues) -> values. Counter: [v]; gauge: [v, seq of the last set or None];
        # histogram: [per-bucket counts (not cumulative) ..., +Inf count, sum].
        self.values: dict = {}

    def series(self, name: str, labelvalue: str):
        """The series object (child for labelled families) and its model values, created if new."""
        family = self.families[name]
        kind, labelnames, extra = POOL[name]
        lv = (labelvalue,) if labelnames else ()
        obj = family.labels(*lv) if labelnames else family
        if (name, lv) not in self.values:
            if kind == "histogram":
                self.values[(name, lv)] = [0.0] * (len(extra) + 2)
            elif kind == "gauge":
                self.values[(name, lv)] = [0.0, None]
            else:
                self.values[(name, lv)] = [0.0]
        return obj, self.values[(name, lv)]


class MergeMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="rockstar-prop-")
        self.seg = Segment.create(self.tmp, GEOMETRY)
        self.merger = Merger(self.seg)
        self.workers: list[SimWorker] = []  # every worker ever started (dead ones keep their model)
        # Model of the slab table: state and generation per slab.
        self.slab_state = [FREE] * GEOMETRY.n_slabs
        self.slab_gen = [0] * GEOMETRY.n_slabs
        self.claim_failures = 0
        self.set_seq = 0  # order of gauge updates, for mode "last"
        self.last_stamp = 0.0

    def teardown(self) -> None:
        path = self.seg.path
        self.workers.clear()
        self.merger = None
        self.seg.close()
        if os.path.exists(path):
            os.unlink(path)
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- helpers ----------------------------------------------------------------------------------
    def live(self) -> list[SimWorker]:
        return [w for w in self.workers if w.alive]

    def has_live(self) -> bool:
        return any(w.alive for w in self.workers)

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
        worker = SimWorker(self.seg, slab, generation)
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
        worker.families[name] = declare_metric(name, worker.registry)
        if not POOL[name][1]:
            worker.series(name, "")  # an unlabelled family is its own series: it exists at zero now

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
            worker.series(data.draw(st.sampled_from(labelled), label="name"), labelvalue)

    @precondition(lambda self: self.has_live_with({"counter"}))
    @rule(data=st.data(), amount=AMOUNTS, labelvalue=st.sampled_from(LABEL_VALUES))
    def inc_counter(self, data, amount, labelvalue) -> None:
        worker = self.pick_worker(data)
        name = self.pick_family(data, worker, "counter")
        if name is None:
            return
        obj, model = worker.series(name, labelvalue)
        obj.inc(amount)
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
        obj, model = worker.series(name, labelvalue)
        last = POOL[name][2] == "last"
        if last:
            # Mode "last" keeps the reading with the newest time.time() stamp; two updates within one
            # clock tick would tie and the merge could pick either. Instead of loosening the model we
            # make the clock strictly increasing between updates: wait until time.time() has moved
            # past the last stamp, then check the stamp the update wrote is newer than every earlier
            # one. Then "newest stamp" and "most recent update" (the model's set_seq) are the same.
            deadline = time.monotonic() + 1.0
            while time.time() <= self.last_stamp and time.monotonic() < deadline:
                pass
        if how == "set":
            obj.set(value)
            model[0] = float(value)
        elif how == "inc":
            obj.inc(value)
            model[0] += value
        else:
            obj.dec(value)
            model[0] -= value
        if last:
            stamp = obj._vals[obj._idx + 1]
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
        obj, model = worker.series(name, labelvalue)
        obj.observe(amount)
        bounds = POOL[name][2]
        bucket = next((i for i, b in enumerate(bounds) if amount <= b), len(bounds))
        model[bucket] += 1
        model[-1] += amount

    @precondition(lambda self: self.has_live())
    @rule(data=st.data(), collect=st.booleans())
    def kill_worker(self, data, collect) -> None:
        """A worker exits: its slab is retired; sometimes the aggregator folds it right away."""
        worker = self.pick_worker(data)
        assert self.seg.retire_slab(worker.slab, worker.generation)
        assert not self.seg.retire_slab(worker.slab, worker.generation)  # a tenancy ends once
        worker.alive = False
        self.slab_state[worker.slab] = RETIRED
        if collect:
            self.collect_dead()

    @precondition(lambda self: self.has_live())
    @rule(data=st.data(), n=st.integers(2, 4), collect=st.booleans())
    def kill_workers(self, data, n, collect) -> None:
        """Several workers exit (a reload), folded or not."""
        for _ in range(n):
            if self.has_live():
                self.kill_worker(data, False)
        if collect:
            self.collect_dead()

    @rule()
    def collect_dead(self) -> None:
        retired = [i for i, s in enumerate(self.slab_state) if s == RETIRED]
        assert self.merger.collect_dead() == len(retired)
        for i in retired:
            self.slab_state[i] = FREE

    @precondition(lambda self: self.slab_state.count(RETIRED) == 1)
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
        self.merger = Merger(self.seg)
        if after_flip:
            if merge_first:
                assert render_json(self.merger.merge()) == self.expected()
            assert self.merger.collect_dead() in (0, 1)  # 0 if the new Merger finished the fold
            self.slab_state[slab] = FREE

    @rule()
    def restart_aggregator(self) -> None:
        """A new aggregator: its retired totals come from the segment, nothing in memory."""
        if RETIRED in self.slab_state:
            event("aggregator restart with an unfolded retired slab")
        if any(not w.alive for w in self.workers):
            event("aggregator restart after a worker died")
        self.merger = Merger(self.seg)

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
                elif worker.alive:  # gauges: live workers only
                    gauge_readings.setdefault((name, key), []).append(values)
        out_h = {}
        for key, acc in histograms.items():
            name = key.split("{")[0]
            bounds = POOL[name][2]
            cumulative, buckets = 0.0, {}
            for bound, count in zip(list(bounds) + [math.inf], acc[:-1]):
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

    @invariant()
    def merge_matches_model(self) -> None:
        snap = self.merger.merge()
        got = render_json(snap)
        want = self.expected()
        assert got == want
        assert snap.claim_failures == self.claim_failures == Header.claim_failures.get(self.seg.buf)
        assert sorted(w.slot.slab for w in snap.workers) == sorted(w.slab for w in self.live())

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

"""Fleet push: the aggregator sends its merged series to a Prometheus remote-write endpoint (Prometheus with
``--web.enable-remote-write-receiver``, Mimir, Thanos Receive, VictoriaMetrics, Grafana Cloud).

Every ``remote_write_interval`` seconds the aggregator's loop renders what ``/metrics`` serves (the 0.0.4
text, with the aggregator's families) and queues it as one *batch*, stamped with the time it was rendered.
One thread, ``RemoteWriter``, turns the oldest batch into a remote-write 1.0 request (a protobuf
``WriteRequest``, snappy-compressed: the ``protobuf`` and ``cramjam`` packages of the optional extra
``rockstar-mp[remote-write]``, imported only when ``remote_write_url`` is set) and POSTs it; so neither the
encoding nor a slow or dead receiver ever holds the loop. A failed POST (no connection, a timeout, 5xx or
429) is retried, after ``remote_write_min_backoff`` seconds, doubling up to ``remote_write_max_backoff``,
for as long as it takes; other 4xx answers reject the batch for good. Meanwhile new batches wait in a queue
of at most ``remote_write_queue``; when it is full the oldest waiting batch is dropped (the newest data is
what matters most for counters). Drops are counted by reason (``queue_full``, ``rejected``) in
``rockstar_remote_write_batches_dropped_total`` and ``system.remote_write`` of the JSON.

The CPU it takes is bounded by the interval: one render on the loop (what a scrape costs) and one encode
in the thread per batch, and at most ``remote_write_queue`` encodes in a row when a backlog drains.

Tokens and passwords are never logged: the endpoint is logged as ``scheme://host:port/path``.
"""
from __future__ import annotations

import base64
import collections
import logging
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable

from ..config import MonitoringConfig, parse_remote_write_labels
from ..segment import RockstarError
from .exposition import ExtraFamily, render_prometheus
from .net import REPEATED
from .state import AggregatorState
from .views import exported_families

log = logging.getLogger("rockstar_mp.aggregator")

EXTRA = "rockstar-mp[remote-write]"
USER_AGENT = "rockstar-mp-remote-write"
# MetricMetadata.MetricType of the remote-write proto
METRIC_TYPES = {"counter": 1, "gauge": 2, "histogram": 3, "gaugehistogram": 4, "summary": 5, "info": 6,
                "stateset": 7}
DROP_REASONS = ("queue_full", "rejected")
_SAMPLE = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)",?')
_UNESCAPE = re.compile(r"\\(.)")


class RemoteWriteUnavailable(RockstarError):
    """``remote_write_url`` is set but the libraries of the ``remote-write`` extra are not installed."""


class Codec:
    """Builds remote-write 1.0 request bodies: a ``prometheus.WriteRequest`` (protobuf), snappy-compressed
    (the block format, not the framed one). The message classes are made from a descriptor written here,
    in a private descriptor pool, so no generated code and no ``protoc`` are needed.

    >>> Codec.load().encode([(( ("__name__", "up"), ), 1.0)], 1_700_000_000_000, [])  # doctest: +SKIP
    """

    def __init__(self, write_request: type, compress: Callable[[bytes], Any],
                 decompress: Callable[[bytes], Any]) -> None:
        self._write_request = write_request
        self._compress = compress
        self._decompress = decompress

    @classmethod
    def load(cls) -> "Codec":
        """The codec, or ``RemoteWriteUnavailable`` naming the extra to install."""
        try:
            import cramjam
            from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
        except ImportError as exc:
            raise RemoteWriteUnavailable(
                f"remote_write_url is set, but {exc.name or 'a module'} is not installed: "
                f"pip install '{EXTRA}' (or unset remote_write_url / $ROCKSTAR_REMOTE_WRITE_URL)") from None
        pool = descriptor_pool.DescriptorPool()
        pool.Add(_remote_write_proto(descriptor_pb2))
        write_request = message_factory.GetMessageClass(pool.FindMessageTypeByName("prometheus.WriteRequest"))
        return cls(write_request, cramjam.snappy.compress_raw, cramjam.snappy.decompress_raw)

    def encode(self, series: list, timestamp_ms: int, metadata: list) -> bytes:
        """``series``: ``[(sorted ((label, value), ...), value)]``, every sample at ``timestamp_ms``;
        ``metadata``: ``[(family, type, help)]``. The compressed body of one request."""
        request = self._write_request()
        for labels, value in series:
            entry = request.timeseries.add()
            for name, text in labels:
                entry.labels.add(name=name, value=text)
            entry.samples.add(value=value, timestamp=timestamp_ms)
        for family, kind, help_text in metadata:
            request.metadata.add(type=METRIC_TYPES.get(kind, 0), metric_family_name=family, help=help_text)
        return bytes(self._compress(request.SerializeToString()))

    def decode(self, body: bytes) -> Any:
        """A request body back as a ``WriteRequest`` message (what a receiver reads)."""
        request = self._write_request()
        request.ParseFromString(bytes(self._decompress(body)))
        return request


def _remote_write_proto(descriptor_pb2: Any) -> Any:
    """The messages of Prometheus's ``prompb/remote.proto`` and ``types.proto`` that a sender needs,
    with their field numbers (samples only: no exemplars, no native histograms)."""
    proto = descriptor_pb2.FileDescriptorProto(name="rockstar_mp/remote_write.proto", package="prometheus",
                                               syntax="proto3")
    kinds = descriptor_pb2.FieldDescriptorProto
    repeated, optional = kinds.LABEL_REPEATED, kinds.LABEL_OPTIONAL

    def message(name: str, *fields: tuple) -> None:
        msg = proto.message_type.add(name=name)
        for number, (field_name, kind, label, type_name) in enumerate(fields, start=1):
            if field_name is None:
                continue  # a field number we do not send
            msg.field.add(name=field_name, number=number, type=kind, label=label,
                          type_name=f".prometheus.{type_name}" if type_name else None)

    message("Label", ("name", kinds.TYPE_STRING, optional, None), ("value", kinds.TYPE_STRING, optional, None))
    message("Sample", ("value", kinds.TYPE_DOUBLE, optional, None), ("timestamp", kinds.TYPE_INT64, optional, None))
    message("TimeSeries", ("labels", kinds.TYPE_MESSAGE, repeated, "Label"),
            ("samples", kinds.TYPE_MESSAGE, repeated, "Sample"))
    message("MetricMetadata", ("type", kinds.TYPE_INT32, optional, None),
            ("metric_family_name", kinds.TYPE_STRING, optional, None), (None, None, None, None),
            ("help", kinds.TYPE_STRING, optional, None), ("unit", kinds.TYPE_STRING, optional, None))
    message("WriteRequest", ("timeseries", kinds.TYPE_MESSAGE, repeated, "TimeSeries"), (None, None, None, None),
            ("metadata", kinds.TYPE_MESSAGE, repeated, "MetricMetadata"))
    return proto


def _unescape(value: str) -> str:
    return _UNESCAPE.sub(lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def parse_exposition(text: str, extra_labels: dict[str, str]) -> tuple[list, list]:
    """Our own 0.0.4 text (``render_prometheus``) as ``(series, metadata)`` for ``Codec.encode``.
    ``extra_labels`` (``job``, ``instance``...) are added to every series that lacks them, as Prometheus
    adds its ``external_labels``.

    >>> parse_exposition('# TYPE up gauge\\nup{a="x",b=""} 1.0\\n', {"job": "j"})
    ([((('__name__', 'up'), ('a', 'x'), ('job', 'j')), 1.0)], [('up', 'gauge', '')])
    """
    series, help_texts, types = [], {}, {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            family, _, help_text = line[7:].partition(" ")
            help_texts[family] = _unescape(help_text)
        elif line.startswith("# TYPE "):
            family, _, kind = line[7:].partition(" ")
            types[family] = kind
        elif line and not line.startswith("#"):
            match = _SAMPLE.match(line)
            if match is None:
                continue  # cannot happen with our renderer; never send half a sample
            name, labels_text, value = match.groups()
            labels = dict(extra_labels)
            labels.update((k, _unescape(v)) for k, v in _LABEL.findall(labels_text or ""))
            labels["__name__"] = name
            # an empty value is no label at all, as when Prometheus scrapes (receivers may refuse one)
            series.append((tuple(sorted((k, v) for k, v in labels.items() if v)), float(value)))
    metadata = [(family, kind, help_texts.get(family, "")) for family, kind in types.items()]
    return series, metadata


@dataclass
class Batch:
    """One rendering of the metrics, waiting to be sent."""

    timestamp_ms: int
    text: str
    payload: bytes | None = None  # encoded on its first attempt, kept for the retries
    samples: int = 0


@dataclass
class Counts:
    made: int = 0
    sent: int = 0
    samples_sent: int = 0
    retries: int = 0  # failed attempts that will be retried
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    last_sent_ms: int = 0  # the timestamp of the newest batch the receiver accepted
    last_error: str = ""


class Outcome:
    SENT, RETRY, REJECTED = "sent", "retry", "rejected"


class RemoteWriter:
    """The queue of batches and the thread that sends them; built by ``from_config`` when
    ``remote_write_url`` is set. ``maybe_submit(state)`` on the loop's tick, ``close()`` at the end.

    >>> writer = RemoteWriter.from_config(MonitoringConfig(remote_write_url="http://127.0.0.1:9090/api/v1/write"))
    """

    def __init__(self, config: MonitoringConfig, codec: Codec) -> None:
        self.url = config.remote_write_url or ""
        self.shown_url = redacted(self.url)
        self.interval = config.remote_write_interval
        self.timeout = config.remote_write_timeout
        self.min_backoff = config.remote_write_min_backoff
        self.max_backoff = config.remote_write_max_backoff
        self.capacity = config.remote_write_queue
        self.labels = {"job": "rockstar-mp", "instance": f"{socket.gethostname()}:{config.metrics_port}",
                       **parse_remote_write_labels(config.remote_write_labels)}
        self._headers = _request_headers(config)
        self._codec = codec
        self._pending: collections.deque[Batch] = collections.deque()
        self._in_flight: Batch | None = None
        self._lock = threading.Condition()
        self._closing = threading.Event()
        self.counts = Counts()
        self._next_at = 0.0
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="rockstar-remote-write", daemon=True)

    @classmethod
    def from_config(cls, config: MonitoringConfig) -> "RemoteWriter | None":
        """A started writer when ``remote_write_url`` is set, else None; ``RemoteWriteUnavailable`` when
        the extra is missing."""
        if not config.remote_write_url:
            return None
        writer = cls(config, Codec.load())
        writer._thread.start()
        log.info("rockstar-mp aggregator: remote write to %s every %g s", writer.shown_url, writer.interval)
        return writer

    # -- on the loop ---------------------------------------------------------------------------------
    def maybe_submit(self, state: AggregatorState) -> None:
        """Render and queue a batch when one is due (the first at once)."""
        now = time.monotonic()
        if now < self._next_at:
            return
        self._next_at = now + self.interval
        snap = state.snapshot()
        self.submit(render_prometheus(snap, None, exported_families(state)))

    def submit(self, text: str) -> None:
        """Queue one rendering, stamped now; when the queue is full the oldest waiting batch is dropped."""
        with self._lock:
            stamp = max(int(time.time() * 1000), self.counts.last_sent_ms + 1, self._newest_ms() + 1)
            if len(self._pending) >= self.capacity:
                self._pending.popleft()
                self.counts.dropped["queue_full"] += 1
            self._pending.append(Batch(stamp, text))
            self.counts.made += 1
            self._lock.notify()

    def _newest_ms(self) -> int:
        newest = self._pending[-1] if self._pending else self._in_flight
        return newest.timestamp_ms if newest is not None else 0

    def stats(self) -> dict:
        """``system.remote_write`` of the JSON: one consistent reading of the counts."""
        with self._lock:
            c = self.counts
            return {"url": self.shown_url, "batches_made": c.made, "batches_sent": c.sent,
                    "samples_sent": c.samples_sent, "batches_dropped": dict(c.dropped), "retries": c.retries,
                    "queued": len(self._pending) + (self._in_flight is not None), "capacity": self.capacity,
                    "last_sent_timestamp": c.last_sent_ms / 1000 if c.last_sent_ms else None,
                    "failing": self._failing, "last_error": c.last_error}

    def families(self) -> list[ExtraFamily]:
        """The ``rockstar_remote_write_*`` families of ``/metrics``."""
        s = self.stats()
        unlabelled = ("", (), ())
        return [
            ExtraFamily("rockstar_remote_write_batches", "counter", "Batches rendered for remote write",
                        [(*unlabelled, s["batches_made"])]),
            ExtraFamily("rockstar_remote_write_batches_sent", "counter", "Batches the receiver accepted",
                        [(*unlabelled, s["batches_sent"])]),
            ExtraFamily("rockstar_remote_write_batches_dropped", "counter",
                        "Batches dropped: the queue was full, or the receiver rejected them (4xx)",
                        [("", ("reason",), (reason,), n) for reason, n in s["batches_dropped"].items()]),
            ExtraFamily("rockstar_remote_write_retries", "counter", "Failed sends that were retried",
                        [(*unlabelled, s["retries"])]),
            ExtraFamily("rockstar_remote_write_queue_batches", "gauge", "Batches waiting or being sent",
                        [(*unlabelled, s["queued"])]),
            ExtraFamily("rockstar_remote_write_last_sent_timestamp_seconds", "gauge",
                        "When the newest batch the receiver accepted was rendered",
                        [(*unlabelled, s["last_sent_timestamp"] or 0.0)]),
        ]

    def close(self, wait: float = 1.0) -> None:
        """Stop the thread (what is still queued is not sent)."""
        self._closing.set()
        with self._lock:
            self._lock.notify()
        self._thread.join(wait)

    # -- in the thread -------------------------------------------------------------------------------
    def _run(self) -> None:
        backoff = self.min_backoff
        while not self._closing.is_set():
            batch = self._next_batch()
            if batch is None:
                continue
            outcome = self._attempt(batch)
            with self._lock:
                if outcome != Outcome.RETRY:
                    self._in_flight = None
                if outcome == Outcome.REJECTED:
                    self.counts.dropped["rejected"] += 1
                elif outcome == Outcome.RETRY:
                    self.counts.retries += 1
            if outcome == Outcome.RETRY:
                self._closing.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff)
            else:
                backoff = self.min_backoff

    def _next_batch(self) -> Batch | None:
        """The batch being retried, else the oldest waiting one (None when closing)."""
        with self._lock:
            while self._in_flight is None and not self._pending and not self._closing.is_set():
                self._lock.wait()
            if self._in_flight is None and self._pending:
                self._in_flight = self._pending.popleft()
            return self._in_flight

    def _attempt(self, batch: Batch) -> str:
        try:
            if batch.payload is None:
                series, metadata = parse_exposition(batch.text, self.labels)
                batch.payload, batch.text = self._codec.encode(series, batch.timestamp_ms, metadata), ""
                batch.samples = len(series)
            status, detail = self._post(batch.payload)
        except Exception as exc:  # an encoding bug must not kill the thread: the batch is rejected
            log.exception("rockstar-mp aggregator: remote write: cannot encode a batch")
            self._note_failure(f"{type(exc).__name__}: {exc}")
            return Outcome.REJECTED
        if 200 <= status < 300:
            with self._lock:
                self.counts.sent += 1
                self.counts.samples_sent += batch.samples
                self.counts.last_sent_ms = batch.timestamp_ms
            self._note_success()
            return Outcome.SENT
        self._note_failure(detail)
        if status == 0 or status == 429 or status >= 500:
            return Outcome.RETRY
        log.error("rockstar-mp aggregator: remote write to %s rejected a batch (dropped): %s",
                  self.shown_url, detail, extra=REPEATED)
        return Outcome.REJECTED

    def _post(self, payload: bytes) -> tuple[int, str]:
        """``(HTTP status, what went wrong)``; status 0 when no answer came."""
        request = urllib.request.Request(self.url, data=payload, headers=self._headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
                return response.status, ""
        except urllib.error.HTTPError as exc:
            body = exc.read(200).decode("utf-8", "replace").strip()
            return exc.code, f"HTTP {exc.code}: {body}"
        except (OSError, urllib.error.URLError) as exc:  # refused, reset, timed out, DNS
            reason = getattr(exc, "reason", exc)
            return 0, f"{type(reason).__name__}: {reason}"

    def _note_failure(self, detail: str) -> None:
        with self._lock:
            self.counts.last_error = detail
            first = not self._failing
            self._failing = True
        if first:
            log.warning("rockstar-mp aggregator: remote write to %s is failing (%s); retrying with backoff, "
                        "up to %d batches queue meanwhile", self.shown_url, detail, self.capacity)

    def _note_success(self) -> None:
        with self._lock:
            recovered, self._failing = self._failing, False
        if recovered:
            log.info("rockstar-mp aggregator: remote write to %s works again", self.shown_url)


def _request_headers(config: MonitoringConfig) -> dict[str, str]:
    headers = {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
               "X-Prometheus-Remote-Write-Version": "0.1.0", "User-Agent": USER_AGENT}
    if config.remote_write_bearer_token:
        headers["Authorization"] = f"Bearer {config.remote_write_bearer_token}"
    elif config.remote_write_username is not None:
        pair = f"{config.remote_write_username}:{config.remote_write_password or ''}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
    return headers


def redacted(url: str) -> str:
    """``scheme://host:port/path``: what may be logged of an endpoint (no user info, query or fragment)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"

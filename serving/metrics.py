"""Prometheus metrics served at /monitoring/prometheus/metrics (TF Serving's default path, or
the path of --monitoring_config_file). Series of unloaded versions are dropped (with
--worker_processes they stay until the server restarts: prometheus_client's multiprocess
files keep every series a worker ever wrote)."""
import os
import threading
import time
from contextlib import contextmanager
from typing import Dict, Iterator, Set, Tuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

from serving.errors import ServingError
from serving.workers import METRICS_DIR_ENV

PROMETHEUS_PATH = "/monitoring/prometheus/metrics"
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RequestOutcome:
    """Filled in by the request handler once it knows which servable answered.

    The model name is only recorded for models that exist, so requests for random
    names cannot create unbounded label sets.
    """

    def __init__(self) -> None:
        self.model_name = ""
        self.version = ""
        self.status = "OK"
        self.arm = ""  # "stable" / "canary" when the traffic split chose the version


class Metrics:
    """Per-server registry (not the global one) so several servers can share a process."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "conveyor_serving_request_count", "Requests by model, version, API, protocol and status.",
            ["model_name", "version", "api", "protocol", "status"], registry=self.registry)
        self.latency = Histogram(
            "conveyor_serving_request_latency_seconds", "End-to-end request latency.",
            ["model_name", "version", "api", "protocol"], buckets=_LATENCY_BUCKETS,
            registry=self.registry)
        self._series_lock = threading.Lock()
        self._series: Dict[Tuple[str, str], Set[Tuple[str, str, str]]] = {}
        self.batch_size = Histogram(
            "conveyor_serving_batch_size",
            "Rows of the requests merged into one model run (--enable_batching).",
            ["model_name", "version"], buckets=_BATCH_BUCKETS, registry=self.registry)
        self.batch_padding = Counter(
            "conveyor_serving_batch_padding_rows",
            "Rows added to batches to reach an allowed_batch_sizes entry.",
            ["model_name", "version"], registry=self.registry)
        self._batch_series: Set[Tuple[str, str]] = set()
        # Per arm of an A/B split (--ab_split): only requests the split routed.
        self.arm_requests = Counter(
            "conveyor_serving_arm_request_count",
            "Unversioned Predict requests routed by the A/B split, by model, arm (stable or "
            "canary), answering version and status.",
            ["model_name", "arm", "version", "status"], registry=self.registry)
        self.arm_latency = Histogram(
            "conveyor_serving_arm_request_latency_seconds",
            "End-to-end latency of requests routed by the A/B split, by model and arm.",
            ["model_name", "arm"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self._arm_series: Dict[Tuple[str, str], Set[Tuple[str, str]]] = {}
        # With --worker_processes, the worker answering the scrape has just set it.
        self.loaded_versions = Gauge(
            "conveyor_serving_loaded_versions", "Versions currently AVAILABLE per model.",
            ["model_name"], registry=self.registry, multiprocess_mode="mostrecent")

    @contextmanager
    def track(self, api: str, protocol: str) -> Iterator[RequestOutcome]:
        outcome = RequestOutcome()
        start = time.perf_counter()
        try:
            yield outcome
        except ServingError as e:
            outcome.status = e.code.name
            raise
        except Exception:
            outcome.status = "INTERNAL"
            raise
        finally:
            labels = dict(model_name=outcome.model_name, version=outcome.version,
                          api=api, protocol=protocol)
            elapsed = time.perf_counter() - start
            self.latency.labels(**labels).observe(elapsed)
            if outcome.arm:
                self.arm_latency.labels(outcome.model_name, outcome.arm).observe(elapsed)
                self.arm_requests.labels(outcome.model_name, outcome.arm, outcome.version,
                                         outcome.status).inc()
                with self._series_lock:
                    self._arm_series.setdefault((outcome.model_name, outcome.version), set()).add(
                        (outcome.arm, outcome.status))
            self.requests.labels(status=outcome.status, **labels).inc()
            if outcome.model_name:
                with self._series_lock:
                    self._series.setdefault((outcome.model_name, outcome.version), set()).add(
                        (api, protocol, outcome.status))

    def observe_batch(self, model_name: str, version: int, rows: int, padded: int) -> None:
        """Records one model run of the batcher: `rows` of requests, `padded` rows run."""
        labels = (model_name, str(version))
        self.batch_size.labels(*labels).observe(rows)
        if padded > rows:
            self.batch_padding.labels(*labels).inc(padded - rows)
        if labels not in self._batch_series:
            with self._series_lock:
                self._batch_series.add(labels)

    def forget_version(self, model_name: str, version: int) -> None:
        """Drops the series of an unloaded version, so label sets do not grow with reloads."""
        with self._series_lock:
            series = self._series.pop((model_name, str(version)), set())
            batched = (model_name, str(version)) in self._batch_series
            arms = self._arm_series.pop((model_name, str(version)), set())
            self._batch_series.discard((model_name, str(version)))
        if batched:
            for metric in (self.batch_size, self.batch_padding):
                try:
                    metric.remove(model_name, str(version))
                except KeyError:  # no padding was ever recorded
                    pass
        for arm, status in arms:
            try:
                self.arm_requests.remove(model_name, arm, str(version), status)
            except KeyError:
                pass
        for api, protocol, status in series:
            for metric, values in ((self.requests, (model_name, str(version), api, protocol, status)),
                                   (self.latency, (model_name, str(version), api, protocol))):
                try:
                    metric.remove(*values)
                except KeyError:  # already removed (several statuses share a latency series)
                    pass

    def render(self, loaded: dict) -> bytes:
        """Text exposition; `loaded` is {model_name: [versions]} at scrape time."""
        self.loaded_versions.clear()
        for name, versions in loaded.items():
            self.loaded_versions.labels(model_name=name).set(len(versions))
        shared = os.environ.get(METRICS_DIR_ENV)
        if shared:  # a worker of --worker_processes: the sum over all workers
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=shared)
            return generate_latest(registry)
        return generate_latest(self.registry)


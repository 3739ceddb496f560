"""Server-side dynamic batching (`--enable_batching`), shared by the REST and gRPC front ends.

TF Serving batches in C++ (a BatchingSession over a SharedBatchScheduler:
tensorflow_serving/batching/batching_session.cc, tensorflow/core/kernels/batching_util/
shared_batch_scheduler.h) configured by a BatchingParameters file; this is the same model
with the same parameters, in Python around the session call:

  * one queue per model version, signature and output filter; a batch closes when it holds
    `max_batch_size` rows or its oldest request has waited `batch_timeout_micros`;
  * `num_batch_threads` threads shared by every queue run closed batches, oldest first; while
    they are busy the next batches keep filling, which is where merging comes from under load;
  * at most `max_enqueued_batches` batches of `max_batch_size` rows wait per queue: a request
    that does not fit is refused at once with UNAVAILABLE (HTTP 503), so the memory held by
    waiting requests is bounded by the configuration, never by the load;
  * a request of more than `max_batch_size` rows runs as chunks of `max_batch_size` rows, one
    after the other (TF Serving's enable_large_batch_splitting), so the model never holds the
    activations of more than `max_batch_size` rows for it;
  * `allowed_batch_sizes`: a batch is padded up to the next allowed size with copies of its
    first row, as batching_session.cc pads, and the padding is dropped from the outputs.

Requests merge only when their inputs agree in everything but the batch dimension. When a
merged run fails, or an output has no batch dimension to split, each request of the batch
runs alone, so one bad request never fails its batch mates.
"""
import collections
import dataclasses
import logging
import os
import threading
import time
from concurrent.futures import Future, InvalidStateError
from typing import Callable, Deque, Dict, Hashable, List, Optional, Sequence, Tuple

import grpc
import numpy as np

from serving.errors import ServingError

log = logging.getLogger("conveyor.serving.batching")

RunFn = Callable[[Dict[str, np.ndarray]], Dict[str, np.ndarray]]
# on_batch(key, rows of the requests, rows run after padding), after every model run.
BatchHook = Callable[[Hashable, int, int], None]


@dataclasses.dataclass(frozen=True)
class BatchingOptions:
    """TF Serving's BatchingParameters (session_bundle_config.proto), as used here.

    Attributes:
      max_batch_size: most rows in one model run; larger requests run in chunks of this size.
      batch_timeout_micros: how long the oldest request of a batch waits for more, in µs.
      max_enqueued_batches: batches of max_batch_size rows that may wait per queue; a
        request beyond that gets UNAVAILABLE.
      num_batch_threads: threads running batches, shared by every model.
      allowed_batch_sizes: increasing sizes a batch is padded up to; empty: no padding. The
        last must equal max_batch_size (TF Serving's rule).
    Raises (constructor):
      ValueError: a value TF Serving would refuse, naming the field.
    """
    max_batch_size: int = 32
    batch_timeout_micros: int = 2000
    max_enqueued_batches: int = 10
    num_batch_threads: int = os.cpu_count() or 1
    allowed_batch_sizes: Tuple[int, ...] = ()

    def __post_init__(self):
        for name in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"batching parameter {name} must be >= 1, got {getattr(self, name)}")
        if self.batch_timeout_micros < 0:
            raise ValueError(f"batching parameter batch_timeout_micros must be >= 0, "
                             f"got {self.batch_timeout_micros}")
        sizes = tuple(self.allowed_batch_sizes)
        if sizes:
            if any(b <= a for a, b in zip(sizes, sizes[1:])) or sizes[0] < 1:
                raise ValueError(f"allowed_batch_sizes must be positive and increasing, got {list(sizes)}")
            if sizes[-1] != self.max_batch_size:
                raise ValueError(f"the last entry of allowed_batch_sizes ({sizes[-1]}) must equal "
                                 f"max_batch_size ({self.max_batch_size})")


class _Task:
    __slots__ = ("key", "inputs", "rows", "future", "fn", "solo", "enqueued")

    def __init__(self, key: Hashable, inputs: Dict[str, np.ndarray], rows: int, fn: RunFn,
                 solo: bool):
        self.key = key
        self.inputs = inputs
        self.rows = rows
        self.fn = fn
        self.solo = solo          # runs alone: its inputs have no common batch dimension
        self.future: Future = Future()
        self.enqueued = time.monotonic()


class _Queue:
    __slots__ = ("tasks", "rows")

    def __init__(self) -> None:
        self.tasks: Deque[_Task] = collections.deque()
        self.rows = 0


def batch_rows(inputs: Dict[str, np.ndarray]) -> Optional[int]:
    """The common first dimension of every input, or None when there is none (a scalar,
    differing first dimensions, no rows)."""
    rows = {np.shape(v)[0] if np.ndim(v) else -1 for v in inputs.values()}
    if len(rows) != 1:
        return None
    (n,) = rows
    return n if n > 0 else None


class Batcher:
    """Merges concurrent requests with the same key (model version, signature, output filter)
    into one model run; see the module docstring for the rules.

    Args:
      options: the batching parameters.
      on_batch: called after every model run with (key, rows of the requests, rows run
        after padding); must be cheap and must not raise (the metrics).
    Thread safe; `submit` never blocks, `run` blocks until the request's outputs are ready.
    """

    def __init__(self, options: BatchingOptions = BatchingOptions(),
                 on_batch: Optional[BatchHook] = None):
        self.options = options
        self.on_batch = on_batch
        self.timeout = options.batch_timeout_micros / 1e6
        self.capacity = options.max_enqueued_batches * options.max_batch_size
        self._cond = threading.Condition()
        self._queues: Dict[Hashable, _Queue] = {}
        self._closed = False
        self._draining = False
        self._threads = [threading.Thread(target=self._worker, name=f"batch-{i}", daemon=True)
                         for i in range(options.num_batch_threads)]
        for thread in self._threads:
            thread.start()

    # ---- submitting --------------------------------------------------------------------

    def run(self, key: Hashable, fn: RunFn, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """`fn(inputs)`, possibly merged with concurrent requests sharing `key`.

        Returns:
          {output alias: array} for this request's rows only.
        Raises:
          ServingError(UNAVAILABLE): the queue for `key` is full; whatever `fn` raised.
        """
        return self.submit(key, fn, inputs).result()

    def submit(self, key: Hashable, fn: RunFn, inputs: Dict[str, np.ndarray]) -> Future:
        """Queues a request; the Future gets its outputs (or the error). Never blocks.

        Raises:
          ServingError(UNAVAILABLE): the queue for `key` is full (nothing was queued).
        """
        rows = batch_rows(inputs)
        if rows is None:
            return self._enqueue(key, _Task(key, inputs, 1, fn, solo=True))
        if rows <= self.options.max_batch_size:
            return self._enqueue(key, _Task(key, inputs, rows, fn, solo=False))
        return _Chunked(self, key, fn, inputs, rows).future

    def _enqueue(self, key: Hashable, task: _Task) -> Future:
        with self._cond:
            if self._closed:
                raise ServingError(grpc.StatusCode.UNAVAILABLE, "The server is shutting down")
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = _Queue()
            if queue.rows + task.rows > self.capacity:
                # TF Serving's message (shared_batch_scheduler.h Schedule).
                raise ServingError(
                    grpc.StatusCode.UNAVAILABLE,
                    "The batch scheduling queue to which this task was submitted is full "
                    f"(max_enqueued_batches={self.options.max_enqueued_batches} of "
                    f"max_batch_size={self.options.max_batch_size} rows)")
            queue.tasks.append(task)
            queue.rows += task.rows
            if len(queue.tasks) == 1 or queue.rows >= self.options.max_batch_size or task.solo:
                self._cond.notify()
        return task.future

    def drain(self) -> None:
        """From now on every queued request runs at once, without waiting for its batch to
        fill or time out (the server is stopping); submits are still accepted."""
        with self._cond:
            self._draining = True
            self._cond.notify_all()

    def close(self) -> None:
        """Runs what is queued, then stops the threads (waits up to 30 s); later submits
        get UNAVAILABLE."""
        with self._cond:
            self._closed = True
            self._draining = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=30)

    # ---- running -----------------------------------------------------------------------

    def _worker(self) -> None:
        while True:
            with self._cond:
                batch = self._next_batch()
                while batch is None:
                    if self._closed and not self._queues:
                        return
                    self._cond.wait(self._wait_seconds())
                    batch = self._next_batch()
            try:
                self._run_batch(batch)
            except Exception as e:  # a server bug: fail this batch, keep the thread serving
                log.exception("Batch of %d request(s) failed", len(batch))
                for task in batch:
                    _resolve(task.future, error=ServingError(
                        grpc.StatusCode.INTERNAL, f"Internal error: {type(e).__name__}: {e}"))

    def _next_batch(self) -> Optional[List[_Task]]:
        """Takes the ready batch whose oldest request waited longest (lock held)."""
        now = time.monotonic()
        best_key, best_age = None, -1.0
        for key, queue in self._queues.items():
            first = queue.tasks[0]
            age = now - first.enqueued
            ready = (first.solo or queue.rows >= self.options.max_batch_size
                     or age >= self.timeout or self._draining)
            if ready and age > best_age:
                best_key, best_age = key, age
        if best_key is None:
            return None
        queue = self._queues[best_key]
        batch = [queue.tasks.popleft()]
        rows = batch[0].rows
        if not batch[0].solo:
            while queue.tasks and not queue.tasks[0].solo and \
                    rows + queue.tasks[0].rows <= self.options.max_batch_size:
                task = queue.tasks.popleft()
                batch.append(task)
                rows += task.rows
        queue.rows -= rows
        if not queue.tasks:
            del self._queues[best_key]
        else:
            self._cond.notify()  # another batch may be ready for another thread
        return batch

    def _wait_seconds(self) -> Optional[float]:
        """Until the earliest batch timeout (lock held); None: nothing queued."""
        if not self._queues:
            return None
        oldest = min(q.tasks[0].enqueued for q in self._queues.values())
        return max(0.0, oldest + self.timeout - time.monotonic())

    def _run_batch(self, batch: List[_Task]) -> None:
        # A request whose caller gave up while queued (a gRPC deadline or cancellation, a REST
        # timeout) is dropped here; the others become RUNNING and can no longer be cancelled.
        batch = [task for task in batch if task.future.set_running_or_notify_cancel()]
        if not batch:
            return
        key_fn = batch[0].fn
        if batch[0].solo:
            self._settle(batch[0], padded=batch[0].rows)
            return
        rows = sum(task.rows for task in batch)
        padded = self._padded_size(rows)
        merged = _concat([task.inputs for task in batch], padded - rows)
        if merged is not None:
            try:
                outputs = key_fn(merged)
            except Exception as e:  # retried one by one below; a lone request gets its error
                if len(batch) == 1 and padded == rows:
                    batch[0].future.set_exception(e)
                    self._observe(batch, rows, padded)
                    return
                outputs = None
            if outputs is not None and all(np.ndim(v) and len(v) == padded for v in outputs.values()):
                self._observe(batch, rows, padded)
                start = 0
                for task in batch:
                    task.future.set_result({k: v[start:start + task.rows] for k, v in outputs.items()})
                    start += task.rows
                return
        for task in batch:  # not mergeable: each request alone, unpadded
            self._settle(task, padded=task.rows)

    def _settle(self, task: _Task, padded: int) -> None:
        try:
            outputs = task.fn(task.inputs)
        except Exception as e:  # handed to the waiting request, which reports it
            task.future.set_exception(e)
        else:
            task.future.set_result(outputs)
        self._observe([task], task.rows, padded)

    def _observe(self, batch: List[_Task], rows: int, padded: int) -> None:
        if self.on_batch is not None:
            self.on_batch(batch[0].key, rows, padded)

    def _padded_size(self, rows: int) -> int:
        for size in self.options.allowed_batch_sizes:
            if size >= rows:
                return size
        return rows


def _resolve(future: Future, result=None, error: Optional[BaseException] = None) -> None:
    """Sets `future`'s outcome unless its caller cancelled it meanwhile (then drops it)."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass


def _concat(parts: Sequence[Dict[str, np.ndarray]], padding: int) -> Optional[Dict[str, np.ndarray]]:
    """The inputs of several requests as one batch, plus `padding` copies of the first row;
    None when they cannot be merged (other input names, other per-row shapes or dtypes)."""
    keys = parts[0].keys()
    if any(p.keys() != keys for p in parts):
        return None
    merged = {}
    for k in keys:
        arrays = [np.asarray(p[k]) for p in parts]
        if any(a.shape[1:] != arrays[0].shape[1:] or a.dtype != arrays[0].dtype for a in arrays):
            return None
        if padding:
            arrays.append(np.repeat(arrays[0][:1], padding, axis=0))
        merged[k] = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
    return merged


class _Chunked:
    """A request of more rows than max_batch_size, run as consecutive chunks of at most
    max_batch_size rows through the batcher; `future` gets the concatenated outputs.

    A chunk is queued only when the previous one is done, so the request never holds more
    than one chunk's activations and never fills the queue alone. When an output has no
    batch dimension the chunks cannot be put back together; the request then runs whole,
    alone, as without batching.
    """

    def __init__(self, batcher: Batcher, key: Hashable, fn: RunFn, inputs: Dict[str, np.ndarray],
                 rows: int):
        self.batcher, self.key, self.fn, self.inputs, self.rows = batcher, key, fn, inputs, rows
        self.size = batcher.options.max_batch_size
        self.outputs: List[Dict[str, np.ndarray]] = []
        self.future: Future = Future()
        self._next(0)

    def _next(self, start: int) -> None:
        if self.future.cancelled():  # the caller gave up: queue no more chunks
            self.outputs = []
            return
        chunk = {k: v[start:start + self.size] for k, v in self.inputs.items()}
        try:
            pending = self.batcher._enqueue(self.key, _Task(self.key, chunk, len(next(iter(chunk.values()))),
                                                             self.fn, solo=False))
        except ServingError as e:
            if start == 0:
                raise  # nothing queued yet: submit() raises, as for a small request
            _resolve(self.future, error=e)
            return
        pending.add_done_callback(lambda f, s=start: self._done(f, s))

    def _done(self, chunk_future: Future, start: int) -> None:
        error = chunk_future.exception()
        if error is not None:
            _resolve(self.future, error=error)
            return
        outputs = chunk_future.result()
        rows = min(self.size, self.rows - start)
        if not all(np.ndim(v) and len(v) == rows for v in outputs.values()):
            try:
                whole = self.batcher._enqueue(self.key, _Task(self.key, self.inputs, 1, self.fn, solo=True))
            except ServingError as e:
                _resolve(self.future, error=e)
                return
            whole.add_done_callback(self._copy)
            return
        self.outputs.append(outputs)
        if start + self.size < self.rows:
            self._next(start + self.size)
            return
        _resolve(self.future, result={k: np.concatenate([o[k] for o in self.outputs])
                                      for k in self.outputs[0]})
        self.outputs = []

    def _copy(self, whole: Future) -> None:
        if whole.exception() is not None:
            _resolve(self.future, error=whole.exception())
        else:
            _resolve(self.future, result=whole.result())

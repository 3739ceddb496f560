"""Server-side request batching (`--enable_batching`).

TF Serving's batching is configured by a BatchingParameters file and lives in C++;
this is the small subset Conveyor needs: requests for the same model version and
signature that arrive within `batch_timeout_micros` are concatenated along the batch
dimension (up to `max_batch_size` rows), run once, and the outputs split back.
"""
import queue
import threading
import time
from concurrent.futures import Future
from typing import Callable, Dict, Hashable, List, Tuple

import numpy as np

RunFn = Callable[[Dict[str, np.ndarray]], Dict[str, np.ndarray]]
_IDLE_EXIT_SECONDS = 5.0


class Batcher:
    """Merges concurrent requests with the same key (model version and signature) into one run.

    Args:
      max_batch_size: most rows (first dimension of every input) in one merged run; a
        request larger than this runs alone.
      batch_timeout_micros: how long the first request of a batch waits for others, in µs.
    Raises:
      ValueError: max_batch_size < 1.

    `run` blocks until its own rows' outputs are ready; a request is batchable when all its
    inputs share one non-zero first dimension. One worker thread per key, gone after 5 s idle.
    """

    def __init__(self, max_batch_size: int = 32, batch_timeout_micros: int = 2000):
        if max_batch_size < 1:
            raise ValueError("--max_batch_size must be >= 1")
        self.max_batch_size = max_batch_size
        self.timeout = batch_timeout_micros / 1e6
        self._lock = threading.Lock()
        self._queues: Dict[Hashable, queue.Queue] = {}

    def run(self, key: Hashable, fn: RunFn, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Runs `fn(inputs)`, possibly merged with concurrent requests sharing `key`."""
        rows = {len(v) if np.ndim(v) else -1 for v in inputs.values()}
        if len(rows) != 1 or -1 in rows or rows == {0} or next(iter(rows)) > self.max_batch_size:
            return fn(inputs)  # not batchable (scalars, ragged batch dims, too large)
        future: Future = Future()
        with self._lock:
            q = self._queues.get(key)
            if q is None:
                q = self._queues[key] = queue.Queue()
                threading.Thread(target=self._worker, args=(key, q),
                                 name=f"batch-{key}", daemon=True).start()
            q.put((inputs, next(iter(rows)), future, fn))
        return future.result()

    def _worker(self, key: Hashable, q: queue.Queue) -> None:
        while True:
            try:
                first = q.get(timeout=_IDLE_EXIT_SECONDS)
            except queue.Empty:
                with self._lock:  # exit only if nobody queued in the meantime
                    if q.empty():
                        del self._queues[key]
                        return
                continue
            batch = [first]
            size = first[1]
            deadline = time.monotonic() + self.timeout
            while size < self.max_batch_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = q.get(timeout=remaining)
                except queue.Empty:
                    break
                if size + item[1] > self.max_batch_size:
                    self._run_batch(batch)
                    batch, size = [], 0
                batch.append(item)
                size += item[1]
            self._run_batch(batch)

    @staticmethod
    def _run_batch(batch: List[Tuple[Dict[str, np.ndarray], int, Future, RunFn]]) -> None:
        """Runs a batch with the first request's function (all share model version and signature)."""
        fn = batch[0][3]
        keys = batch[0][0].keys()
        merged = None
        if len(batch) > 1 and all(item[0].keys() == keys for item in batch):
            try:
                merged = {k: np.concatenate([item[0][k] for item in batch]) for k in keys}
            except ValueError:  # per-row shapes differ
                merged = None
        if merged is not None:
            try:
                outputs = fn(merged)
            except Exception:  # one bad request must not fail its batch mates
                outputs = None
            total = sum(item[1] for item in batch)
            if outputs is not None and all(np.ndim(v) and len(v) == total for v in outputs.values()):
                start = 0
                for _, rows, future, _ in batch:
                    future.set_result({k: v[start:start + rows] for k, v in outputs.items()})
                    start += rows
                return
        for inputs, _, future, _ in batch:  # not mergeable: run the requests one by one
            _settle(future, fn, inputs)


def _settle(future: Future, fn: RunFn, inputs: Dict[str, np.ndarray]) -> None:
    try:
        future.set_result(fn(inputs))
    except Exception as e:  # handed to the waiting request thread, which reports it
        future.set_exception(e)

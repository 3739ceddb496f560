"""A background thread that writes queued records in groups, shared by the request log
(conveyor/request_log.py) and the feedback log (conveyor/feedback.py): a request thread only
enqueues, so serving never waits on the disk, and a failed write (a full disk) is logged, never
raised into a request."""
import logging
import queue
import threading
import time
from typing import Any, Callable, Dict, Hashable, Iterable, List, Tuple

log = logging.getLogger(__name__)


class BatchWriter:
    """Takes items from a bounded queue on a daemon thread, turns each into keyed records and
    writes every key's records together, at least every `flush_seconds` and whenever a key
    has `batch_size` of them.

    Args:
      name: the thread's name, and how log lines name this writer.
      to_records: item -> (key, record) pairs; an exception skips the item (logged).
      write: (key, records) -> None, on the thread; an exception loses those records (logged).
      batch_size: records of one key that trigger a write.
      flush_seconds: the longest a record waits to be written.
      max_queue: items waiting; `put` drops items beyond it.
    Attributes:
      dropped: items `put` dropped (queue full); written: records written.
    """

    def __init__(self, name: str, to_records: Callable[[Any], Iterable[Tuple[Hashable, Any]]],
                 write: Callable[[Hashable, List[Any]], None], batch_size: int,
                 flush_seconds: float, max_queue: int):
        self.name = name
        self.dropped = 0
        self.written = 0
        self._to_records = to_records
        self._write = write
        self._batch_size = batch_size
        self._flush_seconds = flush_seconds
        self._queue: "queue.Queue" = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, item: Any) -> bool:
        """Queues `item` without blocking; False (and counted in `dropped`) when the queue is full."""
        try:
            self._queue.put_nowait(item)
            return True
        except queue.Full:
            self.dropped += 1
            return False

    def close(self, timeout: float = 10.0) -> None:
        """Writes what is queued and stops the thread (waiting at most `timeout` seconds)."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        pending: Dict[Hashable, List[Any]] = {}
        last_flush = time.monotonic()
        while True:
            try:
                item = self._queue.get(timeout=self._flush_seconds)
            except queue.Empty:
                item = ()
            if item is None:
                self._flush(pending)
                return
            if item != ():
                try:
                    for key, record in self._to_records(item):
                        pending.setdefault(key, []).append(record)
                except Exception:  # noqa: BLE001 - one bad item must not stop the writer
                    log.exception("%s: could not read an item", self.name)
            full = any(len(records) >= self._batch_size for records in pending.values())
            if full or time.monotonic() - last_flush >= self._flush_seconds:
                self._flush(pending)
                last_flush = time.monotonic()

    def _flush(self, pending: Dict[Hashable, List[Any]]) -> None:
        for key, records in pending.items():
            if not records:
                continue
            try:
                self._write(key, records)
                self.written += len(records)
            except Exception:  # noqa: BLE001 - a full disk must not take the server down
                log.exception("%s: could not write %d record(s) of %s", self.name, len(records), key)
        pending.clear()

"""conveyor/batch_writer.py: grouping, flushing, a full queue, failures that must not stop it."""
import threading
import time

from conveyor.batch_writer import BatchWriter


def collecting_writer(**kwargs):
    written = []
    lock = threading.Lock()

    def write(key, records):
        with lock:
            written.append((key, list(records)))
    settings = dict(batch_size=3, flush_seconds=60.0, max_queue=100)
    settings.update(kwargs)
    return BatchWriter("test", lambda item: [(item % 2, item)], write, **settings), written


def test_a_full_batch_writes_every_key_and_close_writes_the_rest():
    writer, written = collecting_writer()
    for item in range(5):   # key 0 gets 0, 2, 4: a full batch
        assert writer.put(item)
    deadline = time.time() + 10
    while len(written) < 2 and time.time() < deadline:
        time.sleep(0.01)
    assert written == [(0, [0, 2, 4]), (1, [1, 3])]
    writer.put(5)
    writer.close()
    assert written[2:] == [(1, [5])] and writer.written == 6 and writer.dropped == 0


def test_records_wait_at_most_flush_seconds():
    writer, written = collecting_writer(batch_size=1000, flush_seconds=0.2)
    writer.put(1)
    deadline = time.time() + 10
    while not written and time.time() < deadline:
        time.sleep(0.01)
    assert written == [(1, [1])]
    writer.close()


def test_a_full_queue_drops_and_counts():
    gate = threading.Event()
    writer = BatchWriter("test", lambda item: (gate.wait(), [])[1], lambda key, records: None,
                         batch_size=1, flush_seconds=60.0, max_queue=2)
    results = [writer.put(i) for i in range(5)]   # the thread holds one item, two wait
    assert results.count(False) == writer.dropped >= 2
    gate.set()
    writer.close()


def test_a_bad_item_or_a_failed_write_is_logged_and_the_writer_goes_on(caplog):
    attempts = []

    def write(key, records):
        attempts.append(list(records))
        if len(attempts) == 1:
            raise OSError("No space left on device")

    def to_records(item):
        if item == "bad":
            raise ValueError("not a record")
        return [("k", item)]
    writer = BatchWriter("test", to_records, write, batch_size=1, flush_seconds=60.0, max_queue=10)
    for item in ("a", "bad", "b"):
        writer.put(item)
    writer.close()
    assert attempts == [["a"], ["b"]] and writer.written == 1
    messages = [r.getMessage() for r in caplog.records]
    assert "test: could not read an item" in messages
    assert "test: could not write 1 record(s) of k" in messages

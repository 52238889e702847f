"""Group commit for the usage ledger: one writer thread, one transaction per batch.

Every request writes its record twice, and under a flood most requests are refusals that
cost the platform little else: a transaction per write (and a worker thread per write,
competing for SQLite's single write lock) made the ledger the ingress's largest CPU cost.
The writer takes whatever writes are waiting, commits them together, and then resolves
each write's future, so a started record is still committed before its request goes on,
and a quiet ingress commits each write at once, as before. Databases do the same for
their own log (group commit).
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
import time

from serving.records.ledger import RequestEnd, RequestStart, UsageLedger, Write

# A batch larger than this waits for the next transaction (keeps one commit short).
MAX_BATCH = 512


class LedgerWriter:
    """Writes usage records from one thread, batching what arrives while it commits.

    Args:
        ledger: where the records go.
    """

    def __init__(self, ledger: UsageLedger):
        self._ledger = ledger
        self._pending: queue.SimpleQueue[tuple[Write, concurrent.futures.Future] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="fabriek-ledger", daemon=True)
        self._thread.start()

    def start(self, start: RequestStart) -> concurrent.futures.Future:
        """A started record; the future resolves once it is committed."""
        return self._submit(Write(start=start, at=time.time()))

    def finish(self, request_id: str, end: RequestEnd) -> concurrent.futures.Future:
        """Completes a started record."""
        return self._submit(Write(end=end, request_id=request_id, at=time.time()))

    def record(self, start: RequestStart, end: RequestEnd) -> concurrent.futures.Future:
        """A finished record in one write (a request refused before it was admitted)."""
        return self._submit(Write(start=start, end=end, at=time.time()))

    def close(self, timeout_s: float = 10.0) -> None:
        """Commits what is waiting, then stops the thread."""
        self._pending.put(None)
        self._thread.join(timeout_s)

    def _submit(self, write: Write) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        if not self._thread.is_alive():
            future.set_exception(RuntimeError("the usage ledger writer is closed"))
        else:
            self._pending.put((write, future))
        return future

    def _run(self) -> None:
        closing = False
        while not closing:
            batch = []
            item = self._pending.get()
            while item is not None:
                write, future = item
                # A waiter that gave up (a cancelled request) cancels its future; the write
                # itself still happens, and nothing is told.
                batch.append((write, future if future.set_running_or_notify_cancel() else None))
                if len(batch) >= MAX_BATCH:
                    break
                try:
                    item = self._pending.get_nowait()
                except queue.Empty:
                    break
            closing = item is None
            if batch:
                self._commit(batch)

    def _commit(self, batch: list[tuple[Write, concurrent.futures.Future | None]]) -> None:
        try:
            self._ledger.write([write for write, _ in batch])
        except Exception as error:  # noqa: BLE001 - handed to the writes' futures
            if len(batch) == 1:
                if batch[0][1] is not None:
                    batch[0][1].set_exception(error)
                return
            # One bad write (a duplicate request id, say) must not fail its neighbours.
            for item in batch:
                self._commit([item])
            return
        for _, future in batch:
            if future is not None:
                future.set_result(None)

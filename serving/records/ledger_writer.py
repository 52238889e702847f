"""Group commit for the usage ledger: one writer thread, one transaction per batch.

Every request writes its record twice, and under a flood most requests are refusals that
cost the platform little else: a transaction per write (and a worker thread per write,
competing for SQLite's single write lock) made the ledger the ingress's largest CPU cost.
The writer takes whatever writes are waiting, commits them together, and then resolves
each write's future, so a started record is still committed before its request goes on,
and a quiet ingress commits each write at once, as before. Databases do the same for
their own log (group commit).

When the database does not take a write (locked by another process, full, unreachable),
a started record fails at once: its request is refused (503) rather than run without a
record. The ends of requests that did run, and the records of refusals, are kept and
retried with the next batches, or every ``retry_interval_s`` when nothing else arrives,
until the database answers again or ``give_up_after_s`` passes; the writer needs no
restart. It logs the first failure of an outage and its end, not every write.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable

from serving.records.ledger import LedgerUnavailable, RequestEnd, RequestStart, UsageLedger, Write

logger = logging.getLogger("fabriek.ledger")

# A batch larger than this waits for the next transaction (keeps one commit short).
MAX_BATCH = 512
# While the database is unavailable, writes kept for a retry are retried this often when no
# new write arrives (each new write is tried at once, with the kept ones).
RETRY_INTERVAL_S = 1.0
# A kept write older than this is given up (its future fails, naming its request).
GIVE_UP_AFTER_S = 300.0
# At most this many writes are kept (about 2 KiB each with their futures: 40 MiB); past it
# the oldest are given up.
MAX_KEPT = 20_000


@dataclass
class _Item:
    write: Write
    future: concurrent.futures.Future | None  # None: nobody waits for it any more
    failed_at: float | None = None  # when the database first refused it

    @property
    def request_id(self) -> str:
        return self.write.request_id or self.write.start.request_id

    @property
    def is_kept_on_failure(self) -> bool:
        """Ends and refusal records are kept; a started record fails at once, because its
        request waits for it and is refused."""
        return self.write.end is not None


class LedgerWriter:
    """Writes usage records from one thread, batching what arrives while it commits.

    Args:
        ledger: where the records go.
        clock: monotonic seconds (injected for tests).
        retry_interval_s / give_up_after_s / max_kept: retries while the database is
            unavailable (see the module constants).
    """

    def __init__(self, ledger: UsageLedger, *, clock: Callable[[], float] = time.monotonic,
                 retry_interval_s: float = RETRY_INTERVAL_S, give_up_after_s: float = GIVE_UP_AFTER_S,
                 max_kept: int = MAX_KEPT):
        self._ledger = ledger
        self._clock = clock
        self._retry_interval_s = retry_interval_s
        self._give_up_after_s = give_up_after_s
        self._max_kept = max_kept
        self._pending: queue.SimpleQueue[tuple[Write, concurrent.futures.Future] | None] = queue.SimpleQueue()
        # Writes the database refused, oldest first, each retried until it succeeds or is given up.
        self._kept: collections.deque[_Item] = collections.deque()
        # The outage under way: set by the first failure (or a waiter's timeout), cleared by
        # the next commit; the lock keeps its two log lines to one each per outage.
        self._unavailable_since: float | None = None
        self._outage = threading.Lock()
        self._num_given_up = 0
        self._thread = threading.Thread(target=self._run, name="fabriek-ledger", daemon=True)
        self._thread.start()

    @property
    def is_available(self) -> bool:
        """Whether the last transaction committed (or none has failed yet)."""
        return self._unavailable_since is None

    @property
    def num_kept(self) -> int:
        """Writes the database refused that are waiting for a retry."""
        return len(self._kept)

    def note_timeout(self, waited_s: float) -> None:
        """A waiter gave up on a started record after ``waited_s``: the database neither took
        nor refused it in time (a hung connection, a backlog). Logged once per outage."""
        with self._outage:
            if self._unavailable_since is not None:
                return
            self._unavailable_since, self._num_given_up = self._clock(), 0
        logger.error("usage ledger did not commit a started record within %g s (%d writes "
                     "kept): new requests are refused until it does", waited_s, len(self._kept))

    def start(self, start: RequestStart) -> concurrent.futures.Future:
        """A started record; the future resolves once it is committed.

        Its exception is ``LedgerUnavailable`` when the database did not take it.
        """
        return self._submit(Write(start=start, at=time.time()))

    def finish(self, request_id: str, end: RequestEnd) -> concurrent.futures.Future:
        """Completes a started record (retried while the database is unavailable)."""
        return self._submit(Write(end=end, request_id=request_id, at=time.time()))

    def record(self, start: RequestStart, end: RequestEnd) -> concurrent.futures.Future:
        """A finished record in one write (a request refused before it was admitted)."""
        return self._submit(Write(start=start, end=end, at=time.time()))

    def close(self, timeout_s: float = 10.0) -> None:
        """Commits what is waiting (and the kept writes, while the database takes them),
        then stops the thread."""
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
            batch, closing = self._take()
            self._commit_safely(batch)
            self._give_up(self._clock(), f"kept {self._give_up_after_s:g} s, or over {self._max_kept}")
        # Closing: the kept writes are committed while the database takes them; the rest is lost.
        while self._kept and self.is_available:
            self._commit_safely([self._kept.popleft() for _ in range(min(MAX_BATCH, len(self._kept)))])
        self._give_up(float("inf"), "the writer closed", is_closing=True)

    def _take(self) -> tuple[list[_Item], bool]:
        """The next batch: the writes waiting, then kept ones to retry; whether to close.

        Blocks until a write arrives, or for at most ``retry_interval_s`` while writes are kept.
        """
        batch: list[_Item] = []
        try:
            item = self._pending.get(timeout=self._retry_interval_s if self._kept else None)
        except queue.Empty:
            item = ()  # time to retry the kept writes
        while item:
            write, future = item
            # A waiter that gave up (a cancelled request) cancels its future; the write
            # itself still happens, and nothing is told.
            batch.append(_Item(write, future if future.set_running_or_notify_cancel() else None))
            if len(batch) >= MAX_BATCH:
                break
            try:
                item = self._pending.get_nowait()
            except queue.Empty:
                item = ()
        # New writes first, so that kept ones never delay a waiting request past its bound.
        while self._kept and len(batch) < MAX_BATCH:
            batch.append(self._kept.popleft())
        return batch, item is None

    def _commit_safely(self, batch: list[_Item]) -> None:
        if not batch:
            return
        try:
            self._commit(batch)
        except Exception:  # noqa: BLE001 - the one writer thread must outlive any one batch
            logger.exception("usage ledger writer: unexpected error")
            for item in batch:
                if item.future is not None and not item.future.done():
                    item.future.set_exception(RuntimeError("usage ledger writer error"))

    def _commit(self, batch: list[_Item]) -> LedgerUnavailable | None:
        """Commits ``batch`` and resolves its futures; returns the error if the database
        did not take it."""
        try:
            self._ledger.write([item.write for item in batch])
        except LedgerUnavailable as error:
            self._on_unavailable(batch, error)
            return error
        except Exception as error:  # noqa: BLE001 - handed to the writes' futures
            if len(batch) == 1:
                if batch[0].future is not None:
                    batch[0].future.set_exception(error)
                return None
            # One bad write (a duplicate request id, say) must not fail its neighbours.
            for i, item in enumerate(batch):
                unavailable = self._commit([item])
                if unavailable is not None:
                    # Not one write per busy timeout for the rest: they fail or wait together.
                    self._on_unavailable(batch[i + 1:], unavailable)
                    return unavailable
            return None
        self._on_available()
        for item in batch:
            if item.future is not None:
                item.future.set_result(None)
        return None

    def _on_unavailable(self, batch: list[_Item], error: LedgerUnavailable) -> None:
        now = self._clock()
        with self._outage:
            is_new_outage = self._unavailable_since is None
            if is_new_outage:
                self._unavailable_since, self._num_given_up = now, 0
        if is_new_outage:
            # The cause only: no statement, no parameters (and records hold no content).
            logger.error("usage ledger unavailable (%s): new requests are refused until it "
                         "answers; ends of requests are kept and retried for up to %g s",
                         error, self._give_up_after_s)
        retried = [item for item in batch if item.failed_at is not None]
        self._kept.extendleft(reversed(retried))  # back in front, oldest first
        for item in batch:
            if item.failed_at is not None:
                continue
            if item.is_kept_on_failure:
                item.failed_at = now
                self._kept.append(item)
            elif item.future is not None:
                item.future.set_exception(LedgerUnavailable(str(error)))

    def _on_available(self) -> None:
        with self._outage:
            since, self._unavailable_since = self._unavailable_since, None
        if since is not None:
            logger.warning("usage ledger available again after %.1f s (%d writes given up, "
                           "%d still to retry)", self._clock() - since, self._num_given_up,
                           len(self._kept))

    def _give_up(self, now: float, why: str, is_closing: bool = False) -> None:
        """Fails the kept writes that are too old, or too many: each future names its
        request (the gate logs it); the first give-up of an outage is logged here, the
        total when the database answers again."""
        given_up = []
        while self._kept and (len(self._kept) > self._max_kept
                              or now - self._kept[0].failed_at >= self._give_up_after_s):
            given_up.append(self._kept.popleft())
        if not given_up:
            return
        if self._num_given_up == 0 or is_closing:  # once an outage: the total comes at its end
            logger.error("usage ledger: gave up %d writes the database refused (%s)", len(given_up), why)
        self._num_given_up += len(given_up)
        for item in given_up:
            if item.future is not None:
                item.future.set_exception(LedgerUnavailable(
                    f"usage record of {item.request_id} not written: the database was unavailable"))

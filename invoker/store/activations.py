"""Writing activation records (``WhiskActivation.scala``; when, per ``ActivationStoreLevel.scala``).

Records go through ``_bulk_docs`` in batches, like the Scala invoker's batcher: a writer
thread takes whatever is queued (up to ``batch_size``), writes it in one request and
resolves each record's future. A record that already exists counts as written: it is
ours, from before a crash or from a retried request whose answer was lost.

A store outage is ridden out, not dropped (the Scala invoker logs and drops the record
once its retries are spent): by default a record is retried until it is written, and its
future — hence its feed record's offset — stays open meanwhile. The invoker thereby stops
taking work while records cannot be written (feed slots stay held; ``outage_s`` stops
its pings), and nothing is lost: the Kafka record stays uncommitted, so even a crash
during the outage replays the activation instead of losing its record.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any

from invoker.store.database import (
    BulkResult,
    Database,
    DocumentNotFound,
    StoreError,
    StoreUnavailable,
)
from invoker.supervision import SupervisedThread

log = logging.getLogger(__name__)

STORE_ALWAYS = "STORE_ALWAYS"
STORE_FAILURES = "STORE_FAILURES"
STORE_FAILURES_NOT_APPLICATION_ERRORS = "STORE_FAILURES_NOT_APPLICATION_ERRORS"
STORE_LEVELS = (STORE_ALWAYS, STORE_FAILURES, STORE_FAILURES_NOT_APPLICATION_ERRORS)

# Per-document _bulk_docs errors that a retry cannot fix.
_PERMANENT_ERRORS = ("forbidden", "unauthorized", "bad_request", "doc_validation", "invalid")


def should_store(user_limits: Mapping[str, Any] | None, transid_extra_logging: bool, blocking: bool,
                 status_code: int, blocking_level: str, non_blocking_level: str) -> bool:
    """``ActivationStore.storeAfterCheck``: whether this activation gets a record.

    ``storeActivations: false`` in the user's limits wins over everything; then
    extra logging on the transaction; then the level for blocking or non-blocking calls.
    """
    if user_limits is not None and user_limits.get("storeActivations") is False:
        return False
    if transid_extra_logging:
        return True
    level = (blocking_level if blocking else non_blocking_level).upper()
    if level == STORE_ALWAYS:
        return True
    if level == STORE_FAILURES:
        return status_code != 0
    if level == STORE_FAILURES_NOT_APPLICATION_ERRORS:
        return status_code in (2, 3)  # developer or whisk error, not an application error
    raise ValueError(f"unknown activation store level {level!r}; one of {', '.join(STORE_LEVELS)}")


@dataclass
class _Pending:
    doc: dict
    future: Future[None]
    finished: bool = False


_STOP = object()


class ActivationStore:
    """Batched, retrying writer of activation records, plus the reads crash recovery needs.

    Transient failures (``StoreUnavailable``, or a per-document error a retry may fix)
    are retried with backoff until ``deadline_s`` after the batch's first attempt (``None``:
    until written); then the futures fail with ``StoreUnavailable``. Other errors fail
    the affected futures at once. A writer thread that dies is restarted (``on_fatal``
    when it keeps dying).
    """

    def __init__(self, db: Database, batch_size: int = 500, *, concurrency: int = 2,
                 deadline_s: float | None = 30.0, backoff_initial_s: float = 0.1,
                 backoff_max_s: float = 2.0, on_fatal: Callable[[BaseException], None] | None = None) -> None:
        if batch_size < 1 or concurrency < 1:
            raise ValueError("batch_size and concurrency must be at least 1")
        self.db = db
        self.batch_size = batch_size
        self.deadline_s = deadline_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._random = random.Random()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._outstanding = 0
        # Records queued or being written, by _id: for exists()/get() they are already
        # recorded, so a message redelivered meanwhile is not run a second time.
        self._unwritten: dict[str, _Pending] = {}
        # When each write now under way began: a write that has not landed after seconds
        # (the database client retries inside it) means the store is away.
        self._writing_since: dict[int, float] = {}
        self._writers = [
            SupervisedThread(f"activation-store-{i}", self._run, on_fatal or (lambda error: None))
            for i in range(concurrency)
        ]
        for writer in self._writers:
            writer.start()

    should_store = staticmethod(should_store)

    # ------------------------------------------------------------------ public

    def store(self, doc: dict) -> Future[None]:
        """Queue one record; the future resolves once it is in the database."""
        if not isinstance(doc.get("_id"), str):
            raise ValueError("an activation record needs its _id (namespace/activationId)")
        future: Future[None] = Future()
        with self._lock:
            if self._closed:
                future.set_exception(StoreError("the activation store is closed"))
                return future
            self._outstanding += 1
            # A shallow copy: the caller may reuse its dict while the record waits.
            pending = _Pending(dict(doc), future)
            # The first record of an id is the one the database keeps (later ones conflict).
            self._unwritten.setdefault(doc["_id"], pending)
            self._queue.put(pending)
        return future

    @property
    def outage_s(self) -> float:
        """How long the oldest write under way has been trying (0 when none is): a healthy
        write lands in milliseconds, so seconds here mean the store is away."""
        with self._lock:
            oldest = min(self._writing_since.values(), default=None)
        return 0.0 if oldest is None else time.monotonic() - oldest

    @property
    def outstanding(self) -> int:
        """Records queued or being written."""
        with self._lock:
            return self._outstanding

    def exists(self, activation_docid: str) -> bool:
        with self._lock:
            if activation_docid in self._unwritten:
                return True
        return self.db.exists(activation_docid)

    def get(self, docid: str) -> dict | None:
        """The record, from the database or still on its way there; None if neither."""
        with self._lock:
            pending = self._unwritten.get(docid)
            if pending is not None:
                return dict(pending.doc)
        try:
            return self.db.get(docid)
        except DocumentNotFound:
            return None

    def close(self, timeout: float | None = None) -> None:
        """Write everything queued so far, then stop the writers. Idempotent."""
        with self._lock:
            if not self._closed:
                self._closed = True
                for _ in self._writers:
                    self._queue.put(_STOP)
        for writer in self._writers:
            writer.join(timeout)

    def __enter__(self) -> ActivationStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writer

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            batch: list[_Pending] = [item]
            stop = False
            while len(batch) < self.batch_size:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True  # everything queued before it is in this batch
                    break
                batch.append(item)
            try:
                self._write(batch)
            except BaseException as error:  # never lose futures to a bug: fail them
                log.exception("activation store writer failed")
                self._finish(batch, error)
            if stop:
                return

    def _write(self, batch: list[_Pending]) -> None:
        writer = threading.get_ident()
        with self._lock:
            self._writing_since[writer] = time.monotonic()
        try:
            self._write_until_done(batch)
        finally:
            with self._lock:
                del self._writing_since[writer]

    def _write_until_done(self, batch: list[_Pending]) -> None:
        deadline = None if self.deadline_s is None else time.monotonic() + self.deadline_s
        attempt = 0
        todo = batch
        while todo:
            try:
                results = self.db.bulk_put([p.doc for p in todo])
            except (StoreUnavailable, DocumentNotFound) as error:
                # A missing database counts as transient: after a CouchDB without
                # persistence restarts, its databases come back only when recreated.
                problem: BaseException = error
                retry = todo
            except StoreError as error:
                log.error("writing %d activation records failed: %s", len(todo), error)
                self._finish(todo, error)
                return
            else:
                retry = []
                done: list[_Pending] = []
                for pending, result in zip(todo, results, strict=True):
                    if result.ok or result.conflict:
                        done.append(pending)
                    elif _permanent(result):
                        log.error("activation record %s rejected: %s", result.id, result.error)
                        self._finish([pending], StoreError(f"{result.id}: {result.error}"))
                    else:
                        retry.append(pending)
                self._finish(done, None)
                problem = StoreUnavailable(f"{len(retry)} records failed: {_first_error(results)}")
            if not retry:
                if attempt:
                    log.info("activation store is back: %d records written after %d retries", len(batch), attempt)
                return
            attempt += 1
            ceiling = min(self.backoff_max_s, self.backoff_initial_s * (2 ** (attempt - 1)))
            delay = ceiling / 2 + self._random.uniform(0, ceiling / 2)
            if deadline is not None and time.monotonic() + delay >= deadline:
                log.error("giving up on %d activation records after %.0f s: %s",
                          len(retry), self.deadline_s, problem)
                message = f"activation records not written within {self.deadline_s:.0f} s: {problem}"
                self._finish(retry, StoreUnavailable(message))
                return
            if attempt == 1:
                log.warning("activation store: %s; retrying %d records", problem, len(retry))
            time.sleep(delay)
            todo = retry

    def _finish(self, batch: list[_Pending], error: BaseException | None) -> None:
        batch = [p for p in batch if not p.finished]
        with self._lock:
            self._outstanding -= len(batch)
            for pending in batch:
                docid = pending.doc["_id"]
                if self._unwritten.get(docid) is pending:
                    del self._unwritten[docid]
        for pending in batch:
            pending.finished = True
            try:
                if error is None:
                    pending.future.set_result(None)
                else:
                    pending.future.set_exception(error)
            except InvalidStateError:  # cancelled by its owner meanwhile
                pass


def _permanent(result: BulkResult) -> bool:
    error = (result.error or "").split(":", 1)[0].strip().lower()
    return error.startswith(_PERMANENT_ERRORS)


def _first_error(results: list[BulkResult]) -> str:
    for result in results:
        if not result.ok and not result.conflict:
            return f"{result.id}: {result.error}"
    return ""

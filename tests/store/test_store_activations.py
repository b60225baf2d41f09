"""ActivationStore: batched record writes, duplicates, outages, and the store policy (``ActivationStoreLevel.scala``)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import pytest
from store_support import CountingDatabase, load_message

from invoker.store.activations import (
    STORE_ALWAYS,
    STORE_FAILURES,
    STORE_FAILURES_NOT_APPLICATION_ERRORS,
    ActivationStore,
    should_store,
)
from invoker.store.couchdb import CouchServer
from invoker.store.database import (
    BulkResult,
    Database,
    DocumentNotFound,
    StoreError,
    StoreUnavailable,
)


def record(namespace: str = "alice_dev") -> dict:
    doc = load_message("whisk-activation-success.json")
    activation_id = uuid.uuid4().hex
    doc["_id"] = f"{namespace}/{activation_id}"
    doc["activationId"] = activation_id
    return doc


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


# ------------------------------------------------------------------ both backends


def test_hundreds_of_records_are_batched(db: Database) -> None:
    counting = CountingDatabase(db)
    gate = threading.Event()
    counting.before["bulk_put"] = lambda n: gate.wait(10)
    store = ActivationStore(counting, batch_size=100, concurrency=1)
    try:
        docs = [record() for _ in range(450)]
        futures = [store.store(docs[0])]
        wait_until(lambda: counting.calls["bulk_put"] == 1)  # the writer holds a batch of one
        futures += [store.store(doc) for doc in docs[1:]]
        assert store.outstanding == 450
        gate.set()
        for future in futures:
            assert future.result(timeout=30) is None
    finally:
        store.close()
    sizes = [args[0] for method, args in counting.log if method == "bulk_put"]
    assert sizes == [1, 100, 100, 100, 100, 49]
    assert store.outstanding == 0
    rows = db.all_docs()
    assert sorted(r["id"] for r in rows) == sorted(d["_id"] for d in docs)
    stored = db.get(docs[7]["_id"])
    assert stored["response"] == docs[7]["response"] and stored["entityType"] == "activation"


def test_duplicate_write_counts_as_success(db: Database) -> None:
    first = record()
    db.put(first)  # e.g. written before a crash
    again = dict(first, logs=["a rerun would differ"])
    twin = record()
    with ActivationStore(db) as store:
        futures = [store.store(again), store.store(twin), store.store(twin)]
        for future in futures:
            assert future.result(timeout=30) is None
    assert db.get(first["_id"])["logs"] == first["logs"]  # the first record stays
    assert db.exists(twin["_id"])
    assert len(db.all_docs()) == 2


def test_close_flushes_and_later_stores_fail(db: Database) -> None:
    store = ActivationStore(db, batch_size=7, concurrency=3)
    docs = [record() for _ in range(60)]
    futures = [store.store(doc) for doc in docs]
    store.close()
    assert all(f.done() and f.exception() is None for f in futures)
    assert len(db.all_docs()) == 60
    late = store.store(record())
    assert isinstance(late.exception(timeout=1), StoreError)
    store.close()  # idempotent


def test_exists_and_get(db: Database) -> None:
    doc = record()
    with ActivationStore(db) as store:
        assert not store.exists(doc["_id"])
        assert store.get(doc["_id"]) is None
        store.store(doc).result(timeout=30)
        assert store.exists(doc["_id"])
        got = store.get(doc["_id"])
        assert got is not None and got["activationId"] == doc["activationId"]


def test_a_record_on_its_way_already_exists(db: Database) -> None:
    # A message redelivered while its record waits in the queue must not run again.
    counting = CountingDatabase(db)
    gate = threading.Event()
    counting.before["bulk_put"] = lambda n: gate.wait(10)
    first, second = record(), dict(record(), logs=["second"])
    second["_id"], second["activationId"] = first["_id"], first["activationId"]
    with ActivationStore(counting, concurrency=1) as store:
        futures = [store.store(first), store.store(second)]
        assert not db.exists(first["_id"])
        assert store.exists(first["_id"])
        got = store.get(first["_id"])
        assert got is not None and got["logs"] == first["logs"]  # the first write is the one kept
        gate.set()
        for future in futures:
            future.result(timeout=30)
        assert store.exists(first["_id"]) and store.get(first["_id"])["logs"] == first["logs"]  # type: ignore[index]
    assert db.get(first["_id"])["logs"] == first["logs"]


def test_store_needs_an_id(db: Database) -> None:
    with ActivationStore(db) as store, pytest.raises(ValueError):
        store.store({"activationId": "x"})


# ------------------------------------------------------------------ failure handling (scripted database)


class ScriptedDatabase:
    """``bulk_put`` answers from a script: an exception to raise, or a function of the docs."""

    name = "scripted"

    def __init__(self, *script: BaseException | Callable[[list[dict]], list[BulkResult]]) -> None:
        self.script = list(script)
        self.calls: list[list[str]] = []
        self.written: dict[str, dict] = {}

    def bulk_put(self, docs: list[dict]) -> list[BulkResult]:
        self.calls.append([d["_id"] for d in docs])
        step = self.script.pop(0) if self.script else ok
        if isinstance(step, BaseException):
            raise step
        results = step(docs)
        for doc, result in zip(docs, results, strict=True):
            if result.ok:
                self.written[doc["_id"]] = doc
        return results

    def exists(self, docid: str) -> bool:
        return docid in self.written

    def get(self, docid: str, rev: str | None = None) -> dict:
        if docid not in self.written:
            raise DocumentNotFound(docid)
        return self.written[docid]


def ok(docs: list[dict]) -> list[BulkResult]:
    return [BulkResult(d["_id"], True, rev="1-" + "0" * 32) for d in docs]


def per_doc(error_for: dict[int, str]) -> Callable[[list[dict]], list[BulkResult]]:
    def answer(docs: list[dict]) -> list[BulkResult]:
        return [BulkResult(d["_id"], False, error=error_for[i]) if i in error_for
                else BulkResult(d["_id"], True, rev="1-" + "0" * 32) for i, d in enumerate(docs)]
    return answer


def fast_store(db: object, **kw: float) -> ActivationStore:
    options = {"deadline_s": 10.0, "backoff_initial_s": 0.01, "backoff_max_s": 0.05, **kw}
    return ActivationStore(db, concurrency=1, **options)  # type: ignore[arg-type]


def test_unavailable_database_is_retried() -> None:
    db = ScriptedDatabase(StoreUnavailable("down"), StoreUnavailable("still down"))
    with fast_store(db) as store:
        doc = record()
        store.store(doc).result(timeout=10)
    assert db.calls == [[doc["_id"]]] * 3
    assert doc["_id"] in db.written


def test_missing_database_is_retried_until_recreated() -> None:
    db = ScriptedDatabase(DocumentNotFound("no_db_file"))
    with fast_store(db) as store:
        store.store(record()).result(timeout=10)
    assert len(db.calls) == 2


def test_only_the_failed_documents_are_retried() -> None:
    db = ScriptedDatabase(per_doc({1: "unknown_error: try again"}))
    docs = [record() for _ in range(3)]
    gate = threading.Event()
    with fast_store(_Gated(db, gate)) as store:
        futures = [store.store(d) for d in docs]
        gate.set()
        for future in futures:
            future.result(timeout=10)
    assert db.calls[-1] == [docs[1]["_id"]]
    assert set(db.written) == {d["_id"] for d in docs}


def test_rejected_document_fails_alone() -> None:
    db = ScriptedDatabase(per_doc({0: "forbidden: not allowed"}))
    docs = [record() for _ in range(2)]
    gate = threading.Event()
    with fast_store(_Gated(db, gate)) as store:
        bad, good = (store.store(d) for d in docs)
        gate.set()
        error = bad.exception(timeout=10)
        assert isinstance(error, StoreError) and not isinstance(error, StoreUnavailable)
        assert good.result(timeout=10) is None
    assert len(db.calls) == 1


def test_permanent_error_is_not_retried() -> None:
    db = ScriptedDatabase(StoreError("HTTP 400 bad_request"))
    with fast_store(db) as store:
        error = store.store(record()).exception(timeout=10)
    assert isinstance(error, StoreError) and not isinstance(error, StoreUnavailable)
    assert len(db.calls) == 1


def test_unavailable_past_the_deadline_fails_the_futures() -> None:
    db = ScriptedDatabase(*[StoreUnavailable("down")] * 1000)
    started = time.monotonic()
    with fast_store(db, deadline_s=0.5) as store:
        futures = [store.store(record()) for _ in range(3)]
        errors = [f.exception(timeout=10) for f in futures]
    took = time.monotonic() - started
    assert all(isinstance(e, StoreUnavailable) for e in errors)
    assert 0.4 < took < 5
    assert len(db.calls) > 2


class _Gated:
    """Holds the first bulk_put until ``gate`` is set, so a test can queue a whole batch."""

    def __init__(self, inner: ScriptedDatabase, gate: threading.Event) -> None:
        self.inner, self.gate, self.name = inner, gate, inner.name

    def bulk_put(self, docs: list[dict]) -> list[BulkResult]:
        self.gate.wait(10)
        return self.inner.bulk_put(docs)


# ------------------------------------------------------------------ a real outage (pouchdb-server)


def test_outage_then_recovery(couchdb_server_factory) -> None:
    pouch = couchdb_server_factory()
    with CouchServer(pouch.url, deadline_s=1.0, backoff_max_s=0.2) as couch:
        db = couch.database("activations")
        db.ensure_exists()
        store = ActivationStore(db, deadline_s=60.0, backoff_max_s=0.3)
        try:
            store.store(record()).result(timeout=10)
            pouch.stop()
            doc = record()
            future = store.store(doc)
            time.sleep(2.0)  # several failed attempts, well inside the deadline
            assert not future.done()
            pouch.start()
            db.ensure_exists()  # pouchdb-server is in memory: it comes back empty
            assert future.result(timeout=30) is None
            assert db.get(doc["_id"])["activationId"] == doc["activationId"]
        finally:
            store.close()


def test_outage_past_the_deadline(couchdb_server_factory) -> None:
    pouch = couchdb_server_factory()
    with CouchServer(pouch.url, deadline_s=0.5, backoff_max_s=0.1) as couch:
        db = couch.database("activations")
        db.ensure_exists()
        pouch.stop()
        with ActivationStore(db, deadline_s=2.0, backoff_max_s=0.2) as store:
            started = time.monotonic()
            error = store.store(record()).exception(timeout=30)
            took = time.monotonic() - started
    assert isinstance(error, StoreUnavailable)
    assert 1.5 < took < 10


# ------------------------------------------------------------------ store policy


A, F, FN = STORE_ALWAYS, STORE_FAILURES, STORE_FAILURES_NOT_APPLICATION_ERRORS


@pytest.mark.parametrize(
    ("limits", "extra", "blocking", "status", "blocking_level", "non_blocking_level", "expected"),
    [
        ({}, False, True, 0, A, A, True),
        ({}, False, False, 0, A, A, True),
        ({"storeActivations": True}, False, True, 0, A, A, True),
        ({"storeActivations": False}, False, True, 0, A, A, False),
        ({"storeActivations": False}, True, True, 3, A, A, False),  # wins over extra logging
        ({}, False, True, 0, F, A, False),
        ({}, False, True, 1, F, A, True),
        ({}, False, True, 2, F, A, True),
        ({}, False, True, 3, F, A, True),
        ({}, False, True, 0, FN, A, False),
        ({}, False, True, 1, FN, A, False),
        ({}, False, True, 2, FN, A, True),
        ({}, False, True, 3, FN, A, True),
        ({}, False, False, 0, A, F, False),  # non-blocking calls use their own level
        ({}, False, False, 1, A, FN, False),
        ({}, False, False, 2, F, FN, True),
        ({}, False, True, 0, A, F, True),
        ({}, True, True, 0, F, F, True),  # extra logging stores everything
        ({}, True, False, 1, FN, FN, True),
        (None, False, True, 0, "store_failures", A, False),
    ],
)
def test_should_store(limits, extra, blocking, status, blocking_level, non_blocking_level, expected) -> None:
    assert should_store(limits, extra, blocking, status, blocking_level, non_blocking_level) is expected
    assert ActivationStore.should_store(
        user_limits=limits, transid_extra_logging=extra, blocking=blocking, status_code=status,
        blocking_level=blocking_level, non_blocking_level=non_blocking_level) is expected


def test_should_store_rejects_unknown_levels() -> None:
    with pytest.raises(ValueError):
        should_store({}, False, True, 0, "STORE_SOMETIMES", A)

"""The Database protocol, run against the embedded store and a real CouchDB API."""

from __future__ import annotations

import base64
import hashlib
import re
import threading

import pytest
from store_support import new_db_name

from invoker.store.database import Database, DocumentConflict, DocumentNotFound, StoreError

REV = re.compile(r"^(\d+)-[0-9a-f]{32}$")


def generation(rev: str) -> int:
    match = REV.match(rev)
    assert match, f"not a CouchDB revision: {rev!r}"
    return int(match.group(1))


def test_ensure_exists_is_idempotent(db: Database) -> None:
    db.ensure_exists()
    db.ensure_exists()
    assert db.all_docs() == []


def test_database_that_was_never_created_is_not_found(server) -> None:
    missing = server.database(new_db_name())
    with pytest.raises(DocumentNotFound):
        missing.get("anything")
    with pytest.raises(DocumentNotFound):
        missing.put({"_id": "x"})


def test_put_then_get(db: Database) -> None:
    rev = db.put({"_id": "alice_dev/hello", "n": 1, "nested": {"a": [1, 2, None]}})
    assert generation(rev) == 1
    doc = db.get("alice_dev/hello")
    assert doc == {"_id": "alice_dev/hello", "_rev": rev, "n": 1, "nested": {"a": [1, 2, None]}}
    assert db.exists("alice_dev/hello")


def test_put_without_id_gets_one(db: Database) -> None:
    rev = db.put({"x": 1})
    rows = db.all_docs(include_docs=True)
    assert len(rows) == 1 and rows[0]["value"]["rev"] == rev and rows[0]["doc"]["x"] == 1


def test_missing_document(db: Database) -> None:
    with pytest.raises(DocumentNotFound):
        db.get("nobody/nothing")
    assert not db.exists("nobody/nothing")
    with pytest.raises(DocumentNotFound):
        db.get_attachment("nobody/nothing", "code")


def test_revisions_and_conflicts(db: Database) -> None:
    rev1 = db.put({"_id": "ns/a", "v": 1})
    with pytest.raises(DocumentConflict):
        db.put({"_id": "ns/a", "v": 2})  # no _rev for an existing document
    rev2 = db.put({"_id": "ns/a", "_rev": rev1, "v": 2})
    assert generation(rev2) == 2 and rev2 != rev1
    with pytest.raises(DocumentConflict):
        db.put({"_id": "ns/a", "_rev": rev1, "v": 3})  # stale
    with pytest.raises(DocumentConflict):
        db.put({"_id": "ns/new", "_rev": rev1})  # a revision for a document that does not exist
    assert db.get("ns/a")["v"] == 2
    # Old revisions stay readable (until compaction), unknown ones are not found.
    assert db.get("ns/a", rev1) == {"_id": "ns/a", "_rev": rev1, "v": 1}
    assert db.get("ns/a", rev2)["v"] == 2
    with pytest.raises(DocumentNotFound):
        db.get("ns/a", "7-" + "0" * 32)


def test_put_does_not_change_the_callers_document(db: Database) -> None:
    doc = {"_id": "ns/a", "v": [1]}
    db.put(doc)
    assert doc == {"_id": "ns/a", "v": [1]}
    got = db.get("ns/a")
    got["v"].append(2)
    assert db.get("ns/a")["v"] == [1]


@pytest.mark.parametrize("docid", [
    "alice_dev/hello",
    "alice_dev/vision/classify",
    "whisk.system/invokerHealthTestAction0",
    "ns/with space & ?query#frag%25",
    "ns/ünïcødé/名前",
])
def test_document_ids_are_encoded(db: Database, docid: str) -> None:
    rev = db.put({"_id": docid, "k": docid})
    assert db.get(docid)["k"] == docid
    assert db.get(docid, rev)["_id"] == docid
    assert db.exists(docid)
    rev2 = db.put_attachment(docid, rev, "code/x y", b"abc", "text/plain")
    assert db.get_attachment(docid, "code/x y", rev2) == b"abc"
    assert [row["id"] for row in db.all_docs()] == [docid]
    db.delete(docid, rev2)
    assert not db.exists(docid)


def test_delete(db: Database) -> None:
    rev1 = db.put({"_id": "ns/d", "v": 1})
    rev2 = db.put({"_id": "ns/d", "_rev": rev1, "v": 2})
    with pytest.raises(DocumentConflict):
        db.delete("ns/d", rev1)
    db.delete("ns/d", rev2)
    assert not db.exists("ns/d")
    with pytest.raises(DocumentNotFound):
        db.get("ns/d")
    with pytest.raises(DocumentConflict):
        db.delete("ns/d", rev2)  # the tombstone is the current revision now
    with pytest.raises(DocumentNotFound):
        db.delete("ns/never", rev2)
    assert db.all_docs() == []
    # Recreating continues the document's history, as CouchDB does.
    rev4 = db.put({"_id": "ns/d", "v": 4})
    assert generation(rev4) > generation(rev2)
    assert db.get("ns/d")["v"] == 4


def test_attachments(db: Database) -> None:
    rev1 = db.put({"_id": "ns/att", "v": 1})
    text = b"print('hello')\n"
    binary = bytes(range(256)) * 4
    rev2 = db.put_attachment("ns/att", rev1, "code", text, "text/plain; charset=UTF-8")
    rev3 = db.put_attachment("ns/att", rev2, "blob", binary, "application/octet-stream")
    assert generation(rev3) == 3
    doc = db.get("ns/att")
    stubs = doc["_attachments"]
    assert set(stubs) == {"code", "blob"}
    for name, data, ctype in (("code", text, "text/plain; charset=UTF-8"),
                              ("blob", binary, "application/octet-stream")):
        assert stubs[name]["stub"] is True
        assert stubs[name]["content_type"] == ctype
        assert stubs[name]["length"] == len(data)
        assert stubs[name]["digest"].startswith("md5-")
        assert db.get_attachment("ns/att", name) == data
    # The md5 digest is CouchDB's: the same bytes give the same digest on both backends.
    assert stubs["code"]["digest"] == "md5-" + base64.b64encode(hashlib.md5(text).digest()).decode()
    # By revision: the attachment did not exist yet at rev1.
    assert db.get_attachment("ns/att", "code", rev2) == text
    with pytest.raises(DocumentNotFound):
        db.get_attachment("ns/att", "code", rev1)
    with pytest.raises(DocumentNotFound):
        db.get_attachment("ns/att", "nope")
    with pytest.raises(DocumentConflict):
        db.put_attachment("ns/att", rev1, "late", b"x", "text/plain")


def test_updates_keep_attachments_only_as_stubs(db: Database) -> None:
    rev = db.put({"_id": "ns/s", "v": 1})
    rev = db.put_attachment("ns/s", rev, "a", b"AAA", "text/plain")
    doc = db.get("ns/s")
    doc["v"] = 2
    rev = db.put(doc)  # stubs carried over: the attachment stays
    assert db.get_attachment("ns/s", "a") == b"AAA"
    db.put({"_id": "ns/s", "_rev": rev, "v": 3})  # no _attachments: CouchDB drops it
    assert "_attachments" not in db.get("ns/s")
    with pytest.raises(DocumentNotFound):
        db.get_attachment("ns/s", "a")


def test_missing_attachment_stub_is_an_error(db: Database) -> None:
    with pytest.raises(StoreError):
        db.put({"_id": "ns/m", "_attachments": {"zz": {"stub": True}}})


def test_bulk_put(db: Database) -> None:
    existing = db.put({"_id": "ns/1", "v": 0})
    results = db.bulk_put([
        {"_id": "ns/0", "v": 1},
        {"_id": "ns/1", "v": 1},                     # exists: conflict
        {"_id": "ns/2", "v": 1},
        {"_id": "ns/2", "v": 2},                     # duplicate in the same batch
        {"_id": "ns/0b", "_rev": "1-" + "a" * 32},   # revision of nothing
    ])
    assert [r.id for r in results] == ["ns/0", "ns/1", "ns/2", "ns/2", "ns/0b"]
    assert [(r.ok, r.conflict) for r in results] == [
        (True, False), (False, True), (True, False), (False, True), (False, True)]
    assert generation(results[0].rev or "") == 1
    assert results[1].rev is None and results[1].error
    assert db.get("ns/1") == {"_id": "ns/1", "_rev": existing, "v": 0}
    assert db.get("ns/2")["v"] == 1
    # An update with the right revision goes through.
    [update] = db.bulk_put([{"_id": "ns/1", "_rev": existing, "v": 5}])
    assert update.ok and generation(update.rev or "") == 2
    assert db.bulk_put([]) == []


def test_all_docs(db: Database) -> None:
    ids = ["b/2", "a/1", "c/3", "b/1", "B/0", "b/10"]
    db.bulk_put([{"_id": i, "v": i} for i in ids])
    doomed = db.put({"_id": "b/3"})
    db.delete("b/3", doomed)
    rows = db.all_docs()
    assert [r["id"] for r in rows] == ["B/0", "a/1", "b/1", "b/10", "b/2", "c/3"]  # code-point order
    assert all(r["key"] == r["id"] and generation(r["value"]["rev"]) == 1 for r in rows)
    assert all("doc" not in r for r in rows)
    with_docs = db.all_docs(include_docs=True, limit=2)
    assert [(r["id"], r["doc"]["v"], r["doc"]["_rev"]) for r in with_docs] == [
        ("B/0", "B/0", rows[0]["value"]["rev"]), ("a/1", "a/1", rows[1]["value"]["rev"])]
    assert [r["id"] for r in db.all_docs(descending=True, limit=3)] == ["c/3", "b/2", "b/10"]
    assert [r["id"] for r in db.all_docs(startkey="b/", endkey="b/\ufff0")] == ["b/1", "b/10", "b/2"]
    assert [r["id"] for r in db.all_docs(startkey="b/\ufff0", endkey="b/", descending=True)] == [
        "b/2", "b/10", "b/1"]
    assert [r["id"] for r in db.all_docs(startkey="b/10", limit=2)] == ["b/10", "b/2"]
    assert [r["id"] for r in db.all_docs(endkey="a/1")] == ["B/0", "a/1"]  # endkey is inclusive


def test_concurrent_updates_lose_nothing(db: Database) -> None:
    db.put({"_id": "ns/counter", "n": 0})
    threads, per_thread = 8, 5

    def bump() -> None:
        for _ in range(per_thread):
            while True:
                doc = db.get("ns/counter")
                doc["n"] += 1
                try:
                    db.put(doc)
                    break
                except DocumentConflict:
                    continue

    workers = [threading.Thread(target=bump) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    doc = db.get("ns/counter")
    assert doc["n"] == threads * per_thread
    assert generation(doc["_rev"]) == threads * per_thread + 1

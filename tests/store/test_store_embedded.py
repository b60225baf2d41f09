"""What only the embedded store has: persistence to a directory, and one object per name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from invoker.store.database import DocumentConflict, DocumentNotFound
from invoker.store.embedded import KEEP_REVISIONS, EmbeddedServer
from invoker.store.entities import EntityStore


def test_same_database_object_per_name() -> None:
    server = EmbeddedServer()
    assert server.database("whisks") is server.database("whisks")
    server.database("whisks").ensure_exists()
    server.database("whisks").put({"_id": "a"})
    assert server.database("whisks").exists("a")


def test_in_memory_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    server = EmbeddedServer()
    db = server.database("whisks")
    db.ensure_exists()
    db.put({"_id": "a"})
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DocumentNotFound):  # another server shares nothing
        EmbeddedServer().database("whisks").get("a")


def test_persists_across_restarts(tmp_path: Path) -> None:
    first = EmbeddedServer(tmp_path)
    whisks, activations = first.database("whisk_local/whisks"), first.database("activations")
    whisks.ensure_exists()
    activations.ensure_exists()
    store = EntityStore(whisks)
    small = store.put_action({"_id": "ns/small", "entityType": "action", "exec": {"kind": "python:3"}},
                             "def main(a): return a", binary=False)
    big_code = "x = 1\n" * 5000
    big = store.put_action({"_id": "ns/big", "entityType": "action", "exec": {"kind": "python:3"}},
                           big_code, binary=False)
    rev = activations.put({"_id": "ns/0123", "v": 1})
    gone = activations.put({"_id": "ns/gone"})
    activations.delete("ns/gone", gone)

    second = EmbeddedServer(tmp_path)  # a restart: a new process would see the same files
    whisks2, activations2 = second.database("whisk_local/whisks"), second.database("activations")
    assert EntityStore(whisks2).get_action("ns/small", small).code == "def main(a): return a"
    assert EntityStore(whisks2).get_action("ns/big", big).code == big_code
    assert whisks2.get("ns/big") == whisks.get("ns/big")
    assert activations2.get("ns/0123") == {"_id": "ns/0123", "_rev": rev, "v": 1}
    assert not activations2.exists("ns/gone")
    with pytest.raises(DocumentConflict):
        activations2.put({"_id": "ns/0123", "v": 2})
    # Revisions continue where they were.
    assert activations2.put({"_id": "ns/0123", "_rev": rev, "v": 2}).startswith("2-")


def test_every_change_is_on_disk_when_the_call_returns(tmp_path: Path) -> None:
    db = EmbeddedServer(tmp_path).database("activations")
    db.ensure_exists()
    [file] = tmp_path.iterdir()
    assert json.loads(file.read_text())["docs"] == {}
    db.bulk_put([{"_id": f"ns/{i}"} for i in range(3)])
    assert sorted(json.loads(file.read_text())["docs"]) == ["ns/0", "ns/1", "ns/2"]
    assert [p.name for p in tmp_path.iterdir()] == [file.name]  # no temp file left behind


def test_attachment_bytes_are_written_once(tmp_path: Path) -> None:
    db = EmbeddedServer(tmp_path).database("whisks")
    db.ensure_exists()
    rev = db.put({"_id": "ns/a", "v": 0})
    rev = db.put_attachment("ns/a", rev, "code", b"A" * 1000, "text/plain")
    for v in range(1, 5):  # new revisions keep the attachment as a stub
        doc = db.get("ns/a")
        doc["v"] = v
        rev = db.put(doc)
    [file] = tmp_path.iterdir()
    state = json.loads(file.read_text())
    assert len(state["blobs"]) == 1
    assert len(state["docs"]["ns/a"]) == 6


def test_old_revisions_are_bounded() -> None:
    db = EmbeddedServer().database("whisks")
    db.ensure_exists()
    revs = [db.put({"_id": "a", "v": 0})]
    for v in range(1, KEEP_REVISIONS + 5):
        revs.append(db.put({"_id": "a", "_rev": revs[-1], "v": v}))
    assert db.get("a", revs[-KEEP_REVISIONS])["v"] == len(revs) - KEEP_REVISIONS
    with pytest.raises(DocumentNotFound):
        db.get("a", revs[0])


def test_deleted_database(tmp_path: Path) -> None:
    server = EmbeddedServer(tmp_path)
    db = server.database("gone")
    db.ensure_exists()
    db.put({"_id": "a"})
    server.delete_database("gone")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DocumentNotFound):
        db.get("a")
    db.ensure_exists()
    assert db.all_docs() == []

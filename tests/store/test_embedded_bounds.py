"""The embedded store in a long-running standalone mode keeps bounded state: activation
records are kept by count and by age (as OpenWhisk's activation TTL does), and a full disk
is a ``StoreUnavailable`` with memory and disk still in agreement (a real full tmpfs)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from disk_support import fill, small_tmpfs

from invoker.cli import open_databases
from invoker.config import load_config
from invoker.store.database import DocumentNotFound, StoreUnavailable
from invoker.store.embedded import EmbeddedServer, Retention
from invoker.store.entities import EntityStore


def record(n: int) -> dict:
    return {"_id": f"guest/{n:032x}", "activationId": f"{n:032x}", "start": n}


def ids(db) -> list[str]:
    return [row["id"] for row in db.all_docs()]


@pytest.mark.parametrize("on_disk", [False, True])
def test_newest_records_are_kept_by_count(tmp_path: Path, on_disk: bool) -> None:
    server = EmbeddedServer(tmp_path if on_disk else None, retention={"acts": Retention(max_docs=5)})
    db = server.database("acts")
    db.ensure_exists()
    for n in range(8):
        db.put(record(n))
    db.bulk_put([record(n) for n in range(8, 12)])
    assert ids(db) == [record(n)["_id"] for n in range(7, 12)]
    with pytest.raises(DocumentNotFound):
        db.get(record(0)["_id"])
    if on_disk:
        assert ids(EmbeddedServer(tmp_path).database("acts")) == ids(db)


def test_records_older_than_the_ttl_are_gone(tmp_path: Path) -> None:
    now = [1000.0]
    server = EmbeddedServer(tmp_path, retention={"acts": Retention(max_age_s=60)}, clock=lambda: now[0])
    db = server.database("acts")
    db.ensure_exists()
    db.put(record(1))
    now[0] += 30
    db.put(record(2))
    now[0] += 31  # record 1 is 61 s old, record 2 31 s
    assert ids(db) == [record(2)["_id"]]
    with pytest.raises(DocumentNotFound):
        db.get(record(1)["_id"])
    db.put(record(3))
    assert ids(EmbeddedServer(tmp_path).database("acts")) == [record(2)["_id"], record(3)["_id"]]
    now[0] += 3600
    assert ids(db) == []


def test_retention_applies_to_the_activations_database_only() -> None:
    config = load_config(["--id", "0", "--embedded-activations-keep", "3", "--embedded-activations-ttl", "2 days"],
                         env={})
    assert config.embedded_activations_keep == 3 and config.embedded_activations_ttl == 2 * 86400
    whisks, activations, where = open_databases(config)
    assert "activations: newest 3 kept, for 2 days" in where
    for n in range(6):
        activations.put(record(n))
        whisks.put({"_id": f"guest/action{n}", "entityType": "action"})
    assert len(ids(activations)) == 3 and len(ids(whisks)) == 6


def test_default_keeps_a_bounded_number_of_records() -> None:
    config = load_config(["--id", "0"], env={})
    assert config.embedded_activations_keep == 10_000 and config.embedded_activations_ttl is None


# ---------------------------------------------------------------- a full disk


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path, 256) as disk:
        yield disk


def test_full_disk_is_an_error_and_memory_stays_what_the_disk_holds(small_disk: Path) -> None:
    server = EmbeddedServer(small_disk, retention={"acts": Retention(max_docs=1000)})
    db = server.database("acts")
    db.ensure_exists()
    filler = fill(small_disk, 160)
    written = []
    payload = "x" * 2048
    with pytest.raises(StoreUnavailable, match="No space left on device"):
        for n in range(200):
            db.put({**record(n), "blob": payload})
            written.append(record(n)["_id"])
    failed = record(len(written))["_id"]
    assert written, "the disk filled before the first write: make the filler smaller"
    with pytest.raises(DocumentNotFound):
        db.get(failed)
    assert ids(db) == written
    with pytest.raises(StoreUnavailable):  # a bulk write is all or nothing, as the file is
        db.bulk_put([{**record(1000 + n), "blob": payload} for n in range(3)])
    assert ids(db) == written
    assert ids(EmbeddedServer(small_disk).database("acts")) == written
    assert not [p for p in small_disk.iterdir() if p.name.startswith(".tmp-")]  # no half-written file
    filler.unlink()  # room again: writes go on
    db.put({**record(len(written)), "blob": payload})
    assert ids(EmbeddedServer(small_disk).database("acts")) == [*written, failed]


def test_a_new_action_whose_code_the_full_disk_refuses_is_not_left_without_code(small_disk: Path) -> None:
    whisks = EmbeddedServer(small_disk).database("whisks")
    whisks.ensure_exists()
    filler = fill(small_disk, 100)  # room for the document, not for its 120 KiB of code
    store = EntityStore(whisks)
    doc = {"_id": "guest/big", "name": "big", "namespace": "guest", "exec": {"kind": "python:3"}}
    code = "def main(args):\n    return args\n# " + "x" * (120 * 1024)
    with pytest.raises(StoreUnavailable):
        store.put_action(doc, code, binary=False)
    assert not whisks.exists("guest/big")
    filler.unlink()
    rev = store.put_action(doc, code, binary=False)
    assert EntityStore(EmbeddedServer(small_disk).database("whisks")).get_action("guest/big", rev).code == code

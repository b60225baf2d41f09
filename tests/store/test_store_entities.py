"""EntityStore: reading actions and their code (as ``InvokerReactive.scala`` fetches them), on both backends."""

from __future__ import annotations

import base64
import copy
import hashlib
import io
import threading
import time
import zipfile

import pytest
from store_support import CountingDatabase, load_message

from invoker.store.database import Database, DocumentConflict, DocumentNotFound, StoreError
from invoker.store.entities import (
    ActionDocument,
    DocumentTypeMismatch,
    EntityStore,
    UnsupportedAttachmentStore,
)

TEXT = "text/plain; charset=UTF-8"
BINARY = "application/octet-stream"
# Bytes whose standard base64 has "+" and "/", where URL-safe base64 has "-" and "_".
AWKWARD = b"\xfb\xff\xbf\xfe" * 3


def make_zip(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return buffer.getvalue()


def action_doc(docid: str = "alice_dev/hello", kind: str = "python:3.11") -> dict:
    namespace, name = docid.rsplit("/", 1)
    return {
        "_id": docid, "entityType": "action", "namespace": namespace, "name": name,
        "exec": {"kind": kind, "binary": False}, "parameters": [],
        "limits": {"timeout": 60000, "memory": 256, "logs": 10, "concurrency": 1},
        "version": "0.0.1", "publish": False, "annotations": [], "updated": 1714550000000,
    }


def store_fixture(db: Database, name: str, attachment: bytes | None = None) -> tuple[dict, str]:
    """Write a fixture action as the controller left it: the document, then its attachment."""
    original = load_message(name)
    doc = {k: v for k, v in original.items() if k not in ("_rev", "_attachments")}
    rev = db.put(doc)
    if attachment is not None:
        [uuid] = original["_attachments"]
        ctype = original["_attachments"][uuid]["content_type"]
        rev = db.put_attachment(doc["_id"], rev, uuid, attachment, ctype)
    return original, rev


# ------------------------------------------------------------------ fixture documents


def test_fixture_inline_mem_action(db: Database) -> None:
    original, rev = store_fixture(db, "whisk-action-python-inline.json")
    action = EntityStore(db).get_action("alice_dev/hello", rev)
    assert isinstance(action, ActionDocument)
    assert action.code is not None and action.code.startswith("def main(args):")
    assert "Hello " in action.code
    attachment = original["exec"]["code"]
    assert len(action.code.encode()) == attachment["length"]
    assert "sha256-" + hashlib.sha256(action.code.encode()).hexdigest() == attachment["digest"]
    assert action.doc["_rev"] == rev
    assert action.doc["parameters"] == original["parameters"]
    assert action.doc["exec"] == original["exec"]


def test_fixture_couch_attachment_action(db: Database) -> None:
    source = "import torch\n\ndef main(args):\n    return {'device': 'cuda:0'}\n" * 50
    original, rev = store_fixture(db, "whisk-action-attached-code.json", source.encode())
    action = EntityStore(db).get_action("alice_dev/gpu-infer", rev)
    assert action.code == source
    assert action.doc["annotations"] == original["annotations"]
    assert action.doc["parameters"][1]["encryption"] == "aes-256"
    [stub] = action.doc["_attachments"].values()
    assert stub["length"] == len(source.encode()) and stub["content_type"] == TEXT


def test_fixture_binary_zip_action_is_standard_base64(db: Database) -> None:
    zip_bytes = make_zip({"__main__.py": "def classify(args):\n    return {}\n"}) + AWKWARD
    original, rev = store_fixture(db, "whisk-action-binary-zip-attached.json", zip_bytes)
    action = EntityStore(db).get_action("alice_dev/vision/classify", rev)
    assert action.code == base64.b64encode(zip_bytes).decode("ascii")
    assert "+" in action.code or "/" in action.code
    assert base64.b64decode(action.code) == zip_bytes
    assert action.doc["namespace"] == "alice_dev/vision"


def test_fixture_plain_string_code(db: Database) -> None:
    original, rev = store_fixture(db, "whisk-action-health-test.json")
    action = EntityStore(db).get_action("whisk.system/invokerHealthTestAction0", None)
    assert action.code == original["exec"]["code"]
    assert action.doc["_rev"] == rev


# ------------------------------------------------------------------ put_action round trips


def test_put_action_small_text_is_inlined_as_mem(db: Database) -> None:
    code = "def main(args):\n    return {'ä': 'ü'}\n"
    store = EntityStore(db)
    rev = store.put_action(action_doc(), code, binary=False)
    doc = db.get("alice_dev/hello")
    assert doc["_rev"] == rev and "_attachments" not in doc
    attached = doc["exec"]["code"]
    data = code.encode("utf-8")
    assert attached == {
        "attachmentName": "mem:" + base64.urlsafe_b64encode(data).decode(),
        "attachmentType": TEXT,
        "length": len(data),
        "digest": "sha256-" + hashlib.sha256(data).hexdigest(),
    }
    assert doc["exec"]["binary"] is False
    assert store.get_action("alice_dev/hello", rev).code == code


def test_put_action_large_text_is_a_couch_attachment(db: Database) -> None:
    code = "x = 1\n" * 4000  # 24 KB > 16 KiB
    store = EntityStore(db)
    rev = store.put_action(action_doc(), code, binary=False)
    doc = db.get("alice_dev/hello")
    attached = doc["exec"]["code"]
    assert attached["attachmentName"].startswith("couch:")
    assert attached["attachmentType"] == TEXT
    uuid = attached["attachmentName"][len("couch:"):]
    assert list(doc["_attachments"]) == [uuid]
    assert doc["_attachments"][uuid]["content_type"] == TEXT
    assert db.get_attachment("alice_dev/hello", uuid) == code.encode()
    assert store.get_action("alice_dev/hello", rev).code == code


def test_inline_limit_boundary(db: Database) -> None:
    store = EntityStore(db)
    store.put_action(action_doc("ns/below"), "a" * (16 * 1024 - 1), binary=False)
    store.put_action(action_doc("ns/at"), "a" * (16 * 1024), binary=False)
    assert db.get("ns/below")["exec"]["code"]["attachmentName"].startswith("mem:")
    assert db.get("ns/at")["exec"]["code"]["attachmentName"].startswith("couch:")


@pytest.mark.parametrize("size", [100, 40_000], ids=["mem", "couch"])
def test_put_action_binary_stores_decoded_bytes(db: Database, size: int) -> None:
    zip_bytes = make_zip({"__main__.py": "def main(a):\n    return a\n", "pad.bin": "z" * size}) + AWKWARD
    code = base64.b64encode(zip_bytes).decode()
    store = EntityStore(db)
    rev = store.put_action(action_doc(), code, binary=True)
    doc = db.get("alice_dev/hello")
    attached = doc["exec"]["code"]
    assert attached["attachmentType"] == BINARY and doc["exec"]["binary"] is True
    name = attached["attachmentName"]
    if name.startswith("mem:"):
        # The raw zip, URL-safe in the URI; the length is that of the bytes.
        assert base64.urlsafe_b64decode(name[4:]) == zip_bytes
        assert attached["length"] == len(zip_bytes)
    else:
        assert db.get_attachment("alice_dev/hello", name[len("couch:"):]) == zip_bytes
    fetched = store.get_action("alice_dev/hello", rev).code
    assert fetched == code  # standard base64 again, never URL-safe


def test_put_action_rejects_binary_that_is_not_base64(db: Database) -> None:
    with pytest.raises(ValueError):
        EntityStore(db).put_action(action_doc(), "not base64 !", binary=True)


def test_put_action_overwrites_and_drops_the_old_attachment(db: Database) -> None:
    store = EntityStore(db)
    rev1 = store.put_action(action_doc(), "big = 1\n" * 3000, binary=False)
    rev2 = store.put_action(action_doc(), "def main(a): return a\n", binary=False)
    doc = db.get("alice_dev/hello")
    assert doc["_rev"] == rev2 != rev1
    assert "_attachments" not in doc
    rev3 = store.put_action(action_doc(), "y = 2\n" * 4000, binary=False)
    doc = db.get("alice_dev/hello")
    assert len(doc["_attachments"]) == 1  # exactly one, as ``WhiskAction.scala`` attaches code
    assert store.get_action("alice_dev/hello", rev3).code == "y = 2\n" * 4000
    # The revision a message named before the update still reads its own code.
    assert store.get_action("alice_dev/hello", rev2).code == "def main(a): return a\n"
    with pytest.raises(DocumentConflict):
        store.put_action(action_doc(), "z", binary=False, overwrite=False)


def test_delete_action(db: Database) -> None:
    store = EntityStore(db)
    rev = store.put_action(action_doc(), "print(1)", binary=False)
    store.get_action("alice_dev/hello", rev)
    store.delete_action("alice_dev/hello")
    with pytest.raises(DocumentNotFound):
        store.get_action("alice_dev/hello", None)
    # CouchDB still serves the old revision by ?rev= until compaction, so a message that
    # named it reads it from the database (the cache entry itself was dropped).
    counting = CountingDatabase(db)
    store.db = counting
    assert store.get_action("alice_dev/hello", rev).doc["_rev"] == rev
    assert counting.calls["get"] == 1


# ------------------------------------------------------------------ legacy and odd documents


def test_legacy_jar_attachment_by_bare_name(db: Database) -> None:
    jar = b"PK\x03\x04legacy-jar" + AWKWARD
    doc = action_doc("ns/java", "java:8")
    doc["exec"] = {"kind": "java:8", "main": "Hello",
                   "jar": {"attachmentName": "jarfile", "attachmentType": BINARY}, "binary": True}
    rev = db.put(doc)
    rev = db.put_attachment("ns/java", rev, "jarfile", jar, BINARY)
    assert EntityStore(db).get_action("ns/java", rev).code == base64.b64encode(jar).decode()


def test_legacy_jar_string(db: Database) -> None:
    doc = action_doc("ns/java", "java:8")
    doc["exec"] = {"kind": "java:8", "main": "Hello", "jar": "UEsDBAo="}
    rev = db.put(doc)
    assert EntityStore(db).get_action("ns/java", rev).code == "UEsDBAo="


def test_unpadded_mem_uri(db: Database) -> None:
    doc = action_doc()
    data = b"def main(a): return a"
    doc["exec"]["code"] = {"attachmentName": "mem:" + base64.urlsafe_b64encode(data).decode().rstrip("="),
                           "attachmentType": TEXT}
    rev = db.put(doc)
    assert EntityStore(db).get_action("alice_dev/hello", rev).code == data.decode()


def test_sequence_has_no_code(db: Database) -> None:
    doc = action_doc("ns/seq", "sequence")
    doc["exec"] = {"kind": "sequence", "components": ["/ns/a", "/ns/b"]}
    rev = db.put(doc)
    action = EntityStore(db).get_action("ns/seq", rev)
    assert action.code is None and action.doc["exec"]["components"] == ["/ns/a", "/ns/b"]


@pytest.mark.parametrize("scheme", ["s3", "az"])
def test_external_attachment_stores_are_unsupported(db: Database, scheme: str) -> None:
    doc = action_doc()
    doc["exec"]["code"] = {"attachmentName": f"{scheme}:0f1e2d3c-aaaa-bbbb-cccc-000000000000",
                           "attachmentType": TEXT}
    rev = db.put(doc)
    with pytest.raises(UnsupportedAttachmentStore) as caught:
        EntityStore(db).get_action("alice_dev/hello", rev)
    assert isinstance(caught.value, StoreError)


def test_couch_attachment_missing_from_document(db: Database) -> None:
    doc = action_doc()
    doc["exec"]["code"] = {"attachmentName": "couch:2faeed69-15ba-45fb-8bdb-4c0f09dd217d", "attachmentType": TEXT}
    rev = db.put(doc)  # as between the controller's two writes: no attachment yet
    with pytest.raises(DocumentNotFound):
        EntityStore(db).get_action("alice_dev/hello", rev)


def test_wrong_entity_type(db: Database) -> None:
    rev = db.put({"_id": "alice_dev/pkg", "entityType": "package", "name": "pkg"})
    with pytest.raises(DocumentTypeMismatch) as caught:
        EntityStore(db).get_action("alice_dev/pkg", rev)
    assert isinstance(caught.value, StoreError)


def test_missing_action(db: Database) -> None:
    with pytest.raises(DocumentNotFound):
        EntityStore(db).get_action("alice_dev/none", "1-" + "0" * 32)
    with pytest.raises(DocumentNotFound):
        EntityStore(db).get_action("alice_dev/none", None)


# ------------------------------------------------------------------ revisions and cache


class IgnoresRevision(CountingDatabase):
    """A server that answers a revisioned GET with the latest (as an If-Match GET does)."""

    def get(self, docid: str, rev: str | None = None) -> dict:
        self._count("get", docid, rev)
        return self.inner.get(docid)


def test_revision_mismatch_retries_once_with_latest(db: Database) -> None:
    store = EntityStore(db)
    rev1 = store.put_action(action_doc(), "v = 1", binary=False)
    rev2 = store.put_action(action_doc(), "v = 2", binary=False)
    counting = IgnoresRevision(db)
    action = EntityStore(counting).get_action("alice_dev/hello", rev1)
    assert action.doc["_rev"] == rev2 and action.code == "v = 2"
    assert [args for method, args in counting.log if method == "get"] == [
        ("alice_dev/hello", rev1), ("alice_dev/hello", None)]


def test_unknown_revision_falls_back_to_latest(db: Database) -> None:
    store = EntityStore(db)
    rev = store.put_action(action_doc(), "v = 1", binary=False)
    counting = CountingDatabase(db)
    action = EntityStore(counting).get_action("alice_dev/hello", "1-" + "f" * 32)
    assert action.doc["_rev"] == rev and action.code == "v = 1"
    assert counting.calls["get"] == 2


def test_cache_by_revision(db: Database) -> None:
    counting = CountingDatabase(db)
    store = EntityStore(counting)
    rev = store.put_action(action_doc(), "z = 0\n" * 4000, binary=False)  # a couch: attachment
    counting.calls.clear()
    first = store.get_action("alice_dev/hello", rev)
    assert counting.calls == {"get": 1, "get_attachment": 1}
    for _ in range(5):
        assert store.get_action("alice_dev/hello", rev) is first
    assert counting.calls == {"get": 1, "get_attachment": 1}
    # Without a revision the cache is never used.
    store.get_action("alice_dev/hello", None)
    store.get_action("alice_dev/hello", None)
    assert counting.calls == {"get": 3, "get_attachment": 3}


def test_fallback_result_is_not_cached_under_the_requested_revision(db: Database) -> None:
    store = EntityStore(db)
    rev1 = store.put_action(action_doc(), "v = 1", binary=False)
    store.put_action(action_doc(), "v = 2", binary=False)
    counting = IgnoresRevision(db)
    cached = EntityStore(counting)
    cached.get_action("alice_dev/hello", rev1)
    cached.get_action("alice_dev/hello", rev1)
    assert counting.calls["get"] == 4


def test_cache_is_lru_bounded(db: Database) -> None:
    counting = CountingDatabase(db)
    store = EntityStore(counting, cache_size=2)
    revs = {name: store.put_action(action_doc(f"ns/{name}"), f"n = '{name}'", binary=False)
            for name in ("a", "b", "c")}
    counting.calls.clear()
    store.get_action("ns/a", revs["a"])
    store.get_action("ns/b", revs["b"])
    store.get_action("ns/a", revs["a"])  # a is now the most recent
    store.get_action("ns/c", revs["c"])  # evicts b
    assert counting.calls["get"] == 3
    store.get_action("ns/a", revs["a"])
    assert counting.calls["get"] == 3
    store.get_action("ns/b", revs["b"])
    assert counting.calls["get"] == 4


def test_concurrent_first_fetches_share_one_read(db: Database) -> None:
    counting = CountingDatabase(db)
    store = EntityStore(counting)
    rev = store.put_action(action_doc(), "w = 1", binary=False)
    counting.calls.clear()
    counting.before["get"] = lambda *args: time.sleep(0.2)  # keep the first read in flight
    results: list[ActionDocument] = []
    barrier = threading.Barrier(16)

    def fetch() -> None:
        barrier.wait()
        results.append(store.get_action("alice_dev/hello", rev))

    threads = [threading.Thread(target=fetch) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 16 and all(r is results[0] for r in results)
    assert counting.calls["get"] == 1


def test_cached_documents_are_the_stored_ones(db: Database) -> None:
    original, rev = store_fixture(db, "whisk-action-python-inline.json")
    action = EntityStore(db).get_action("alice_dev/hello", rev)
    expected = copy.deepcopy(original)
    expected["_rev"] = rev
    assert action.doc == expected

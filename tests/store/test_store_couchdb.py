"""CouchDatabase's HTTP behaviour: encoding, retries, deadlines, status mapping, credentials.

A scripted HTTP server stands in for CouchDB where a real one cannot be made to fail on cue.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from services import free_port

from invoker.store.couchdb import CouchServer
from invoker.store.database import DocumentConflict, DocumentNotFound, StoreError, StoreUnavailable

PASSWORD = "s3cr3t-p@ss"


class FakeCouch:
    """Answers each request with the next scripted ``(status, body, headers, delay_s)``;
    200 ``{}`` once the script runs out. Records method, raw path and headers."""

    def __init__(self) -> None:
        self.script: list[tuple[int, object, dict[str, str], float]] = []
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                fake.requests.append((self.command, self.path, dict(self.headers)))
                status, body, headers, delay = fake.script.pop(0) if fake.script else (200, {}, {}, 0.0)
                if delay:
                    time.sleep(delay)
                payload = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (a timeout test)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def then(self, status: int, body: object = None, headers: dict[str, str] | None = None,
             delay_s: float = 0.0) -> FakeCouch:
        self.script.append((status, {} if body is None else body, headers or {}, delay_s))
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake() -> Iterator[FakeCouch]:
    server = FakeCouch()
    yield server
    server.close()


def client(url: str, **kw: float) -> CouchServer:
    options = {"deadline_s": 5.0, "backoff_initial_s": 0.01, "backoff_max_s": 0.05, **kw}
    return CouchServer(url, **options)  # type: ignore[arg-type]


def test_paths_are_encoded_per_segment(fake: FakeCouch) -> None:
    fake.then(200, {"_id": "alice_dev/pkg/a b", "_rev": "3-abc"})
    fake.then(200, {"_id": "_design/whisks", "_rev": "1-x"})
    fake.then(200, {"rows": []})
    with client(fake.url) as couch:
        db = couch.database("whisk_local/whisks")
        assert db.get("alice_dev/pkg/a b", rev="3-abc")["_rev"] == "3-abc"
        db.get("_design/whisks")
        db.all_docs(startkey="alice_dev/", endkey="alice_dev/\ufff0", limit=5, descending=True)
    paths = [path for _, path, _ in fake.requests]
    assert paths[0] == "/whisk_local%2Fwhisks/alice_dev%2Fpkg%2Fa%20b?rev=3-abc"
    assert paths[1] == "/whisk_local%2Fwhisks/_design/whisks"
    assert paths[2].startswith("/whisk_local%2Fwhisks/_all_docs?")
    assert "startkey=%22alice_dev%2F%22" in paths[2] and "limit=5" in paths[2]
    assert "descending=true" in paths[2]


def test_transient_answers_are_retried(fake: FakeCouch) -> None:
    fake.then(503).then(500).then(429, headers={"Retry-After": "0"}).then(200, {"_id": "a", "_rev": "1-a"})
    with client(fake.url) as couch:
        assert couch.database("db").get("a")["_rev"] == "1-a"
    assert len(fake.requests) == 4


@pytest.mark.parametrize(("status", "error"), [(404, DocumentNotFound), (409, DocumentConflict),
                                                (400, StoreError), (401, StoreError)])
def test_client_errors_are_mapped_and_not_retried(fake: FakeCouch, status: int, error: type) -> None:
    fake.then(status, {"error": "e", "reason": "r"})
    with client(fake.url) as couch, pytest.raises(error) as caught:
        couch.database("db").put({"_id": "a"})
    assert not isinstance(caught.value, StoreUnavailable)
    assert len(fake.requests) == 1


def test_persistent_5xx_gives_up_at_the_deadline(fake: FakeCouch) -> None:
    fake.script = [(500, {}, {}, 0.0)] * 1000
    started = time.monotonic()
    with client(fake.url, deadline_s=0.6) as couch, pytest.raises(StoreUnavailable) as caught:
        couch.database("db").get("a")
    took = time.monotonic() - started
    assert 0.4 < took < 2.0
    assert len(fake.requests) >= 3
    assert "HTTP 500" in str(caught.value)


def test_slow_answers_time_out_and_are_retried(fake: FakeCouch) -> None:
    fake.then(200, {"_id": "a", "_rev": "1-slow"}, delay_s=1.0).then(200, {"_id": "a", "_rev": "1-fast"})
    with client(fake.url, read_timeout_s=0.2) as couch:
        assert couch.database("db").get("a")["_rev"] == "1-fast"
    assert len(fake.requests) == 2


def test_unreachable_server_is_unavailable() -> None:
    url = f"http://admin:{PASSWORD}@127.0.0.1:{free_port()}"
    started = time.monotonic()
    with client(url, deadline_s=0.5) as couch, pytest.raises(StoreUnavailable) as caught:
        couch.database("db").get("a")
    assert time.monotonic() - started < 3
    assert PASSWORD not in str(caught.value) and PASSWORD not in repr(caught.value)


def test_credentials_never_show(fake: FakeCouch) -> None:
    fake.then(404, {"error": "not_found", "reason": "missing"})
    with CouchServer(fake.url, "admin", PASSWORD) as couch:
        db = couch.database("db")
        for text in (repr(couch), repr(db), couch.url):
            assert PASSWORD not in text
        with pytest.raises(DocumentNotFound) as caught:
            db.get("a")
    assert PASSWORD not in str(caught.value)
    _, _, headers = fake.requests[0]
    assert headers["Authorization"] == "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()


def test_credentials_in_the_url_move_to_auth(fake: FakeCouch) -> None:
    host = fake.url.removeprefix("http://")
    with CouchServer(f"http://admin:{PASSWORD.replace('@', '%40')}@{host}") as couch:
        assert couch.url == fake.url
        assert PASSWORD not in repr(couch) and "admin" in repr(couch)
        couch.database("db").exists("a")
    _, _, headers = fake.requests[0]
    assert headers["Authorization"] == "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()


def test_bulk_put_maps_per_document_errors(fake: FakeCouch) -> None:
    fake.then(201, [{"ok": True, "id": "a", "rev": "1-a"},
                    {"id": "b", "error": "conflict", "reason": "Document update conflict"},
                    {"id": "c", "error": "forbidden", "reason": "no"}])
    with client(fake.url) as couch:
        results = couch.database("db").bulk_put([{"_id": "a"}, {"_id": "b"}, {"_id": "c"}])
    assert [(r.id, r.ok, r.conflict, r.rev) for r in results] == [
        ("a", True, False, "1-a"), ("b", False, True, None), ("c", False, False, None)]
    assert results[2].error == "forbidden: no"
    method, path, _ = fake.requests[0]
    assert (method, path) == ("POST", "/db/_bulk_docs")


def test_ensure_exists(fake: FakeCouch) -> None:
    fake.then(404).then(201, {"ok": True})  # missing: create
    fake.then(200)                            # present: nothing to do
    fake.then(404).then(412, {"error": "file_exists"})  # created by someone else meanwhile
    with client(fake.url) as couch:
        for _ in range(3):
            couch.database("db").ensure_exists()
    assert [m for m, _, _ in fake.requests] == ["HEAD", "PUT", "HEAD", "HEAD", "PUT"]


def test_many_threads_share_the_pool(couchdb_url: str) -> None:
    with CouchServer(couchdb_url) as couch:
        db = couch.database("pool_test")
        db.ensure_exists()
        errors: list[BaseException] = []

        def work(i: int) -> None:
            try:
                for j in range(4):
                    rev = db.put({"_id": f"t{i}/d{j}"})
                    assert db.get(f"t{i}/d{j}", rev)["_rev"] == rev
            except BaseException as error:  # collected for the assert below
                errors.append(error)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        couch.delete_database("pool_test")
    assert not errors

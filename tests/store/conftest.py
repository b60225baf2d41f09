"""Fixtures for the store tests: every ``db`` test runs against the embedded store and a
real CouchDB API (pouchdb-server, from ``couchdb_url`` in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from store_support import new_db_name

from invoker.store.couchdb import CouchServer
from invoker.store.database import Database, StoreError
from invoker.store.embedded import EmbeddedServer

BACKENDS = ["embedded", "couchdb"]


@pytest.fixture(params=BACKENDS)
def server(request: pytest.FixtureRequest) -> Iterator[CouchServer | EmbeddedServer]:
    if request.param == "embedded":
        yield EmbeddedServer()
        return
    # Resolved lazily: an embedded-only run (-k embedded) needs no pouchdb-server.
    url = request.getfixturevalue("couchdb_url")
    with CouchServer(url, deadline_s=10.0) as couch:
        yield couch


@pytest.fixture
def db(server: CouchServer | EmbeddedServer) -> Iterator[Database]:
    name = new_db_name()
    database = server.database(name)
    database.ensure_exists()
    yield database
    try:
        server.delete_database(name)
    except StoreError:
        pass

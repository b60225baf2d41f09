"""Standalone mode with ``CONFIG_whisk_couchdb_*`` set: actions and activation records
live in CouchDB (here pouchdb-server), in the documents the controller and invoker write."""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit

import requests
from standalone_support import start_standalone

from invoker.store.couchdb import CouchServer

CODE = "def main(args):\n    return {'double': 2 * args['n']}\n"


def test_actions_and_records_go_to_couchdb(couchdb_url: str, tmp_path) -> None:
    prefix = f"sa{uuid.uuid4().hex[:6]}_"
    url = urlsplit(couchdb_url)
    env = {"CONFIG_whisk_couchdb_protocol": url.scheme, "CONFIG_whisk_couchdb_host": url.hostname,
           "CONFIG_whisk_couchdb_port": str(url.port),
           "CONFIG_whisk_couchdb_databases_WhiskEntity": f"{prefix}whisks",
           "CONFIG_whisk_couchdb_databases_WhiskActivation": f"{prefix}activations"}
    server = start_standalone(tmp_path, env=env)
    try:
        assert any(f"store:    CouchDB at {couchdb_url}" in line for line in server.output), server.output
        created = requests.put(server.api("actions/double"), json={"exec": {"kind": "python:3", "code": CODE}},
                               auth=server.auth, timeout=30)
        assert created.status_code == 200
        answer = requests.post(server.api("actions/double"), json={"n": 21}, auth=server.auth,
                               params={"blocking": "true"}, timeout=90)
        assert answer.status_code == 200 and answer.json()["response"]["result"] == {"double": 42}
        activation_id = answer.json()["activationId"]
        server.record(activation_id)
        couch = CouchServer(couchdb_url)
        action = couch.database(f"{prefix}whisks").get("guest/double")
        assert action["entityType"] == "action" and action["exec"]["kind"] == "python:3"
        record = couch.database(f"{prefix}activations").get(f"guest/{activation_id}")
        assert record["response"]["result"] == {"double": 42}
    finally:
        server.stop()

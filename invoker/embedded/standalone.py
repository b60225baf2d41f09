"""Standalone mode: the whole path on one machine with nothing installed.

It starts the embedded Kafka-protocol broker, the embedded store and an
invoker with the process backend, stores an action the way the controller
does, invokes it through Kafka exactly as a controller would, and prints the
result, the logs and the activation record::

    ./dev run                              # the built-in hello action
    ./dev run my_action.py -p name Ada     # your own
    ./dev run my_action.zip --main niam    # a zip with __main__.py
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import sys
import time
from pathlib import Path

from invoker.cli import build_invoker
from invoker.config import load_config
from invoker.embedded.broker import EmbeddedKafka
from invoker.embedded.controller import EmbeddedController, result_of
from invoker.entities import action_document
from invoker.messages import FullyQualifiedEntityName
from invoker.messaging import KafkaSettings
from invoker.store.database import DocumentNotFound
from invoker.store.embedded import EmbeddedServer
from invoker.store.entities import EntityStore

HELLO = '''\
def main(args):
    name = args.get("name", "stranger")
    print(f"hello from the action, {name}")
    return {"greeting": f"Hello, {name}!"}
'''

# The embedded broker waits a whole rebalance timeout when a consumer joins a
# group; short group timings make the invoker ready in seconds instead of 5 minutes.
EMBEDDED_KAFKA_TIMINGS = [
    "--kafka-session-timeout-ms", "6000",
    "--kafka-heartbeat-interval-ms", "1000",
    "--kafka-max-poll-interval-ms", "5000",
    "--kafka-fetch-max-wait-ms", "5",
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="./dev run",
        description="Run an OpenWhisk action through the real invoker path on this machine "
        "(embedded Kafka-protocol broker, embedded store, process backend).",
    )
    parser.add_argument("action", nargs="?", help="Python file or zip with __main__.py (default: a hello action)")
    parser.add_argument("-p", "--param", nargs=2, action="append", metavar=("KEY", "VALUE"), default=[],
                        help="a parameter; VALUE is parsed as JSON when it can be")
    parser.add_argument("--kind", default="python:3", help="action kind (default python:3)")
    parser.add_argument("--main", default=None, help="entry function (default main)")
    parser.add_argument("--name", default=None, help="action name (default: the file's stem)")
    parser.add_argument("--namespace", default="guest")
    parser.add_argument("--non-blocking", action="store_true", help="invoke without waiting for the result")
    parser.add_argument("--repeat", type=int, default=1, help="invoke N times (the first is a cold start)")
    parser.add_argument("--verbose", action="store_true", help="show the invoker's own log")
    return parser.parse_args(argv)


def load_code(path: str | None) -> tuple[str, bool, str]:
    if path is None:
        return HELLO, False, "hello"
    file = Path(path)
    if file.suffix == ".zip":
        return base64.b64encode(file.read_bytes()).decode(), True, file.stem
    return file.read_text(), False, file.stem


def param_value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def wait_for_record(db, docid: str, timeout_s: float = 30.0) -> dict:
    """The ack and the record travel separately; the record may land a moment later."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return db.get(docid)
        except DocumentNotFound:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def say(text: str) -> None:
    print(text, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    code, binary, stem = load_code(args.action)
    name = args.name or stem
    params = {k: param_value(v) for k, v in args.param}

    started = time.monotonic()
    say("starting the embedded Kafka-protocol broker (Tansu) ...")
    with EmbeddedKafka() as broker:
        store = EmbeddedServer()
        config = load_config(["--id", "0", "--port", "0", *EMBEDDED_KAFKA_TIMINGS], env={})
        whisks, activations = store.database(config.db_whisks), store.database(config.db_activations)
        whisks.ensure_exists()
        activations.ensure_exists()
        say(f"  broker at {broker.bootstrap_servers}; store: embedded, in memory; backend: processes; GPU: none used")
        kafka = KafkaSettings(broker.bootstrap_servers, session_timeout_ms=6000,
                              heartbeat_interval_ms=1000, max_poll_interval_ms=5000, fetch_max_wait_ms=5)
        controller = EmbeddedController(kafka)
        invoker = build_invoker(config, broker.bootstrap_servers, env={}, whisks=whisks, activations=activations)
        say("starting invoker0 and waiting for it to join its topic ...")
        invoker.start()
        if not invoker.wait_ready(60):
            say("invoker0 did not get its Kafka partition within 60 s")
            return 1
        say(f"  ready in {time.monotonic() - started:.1f} s")
        try:
            doc = action_document(args.namespace, name, args.kind, args.main, binary)
            rev = EntityStore(whisks).put_action(doc, code, binary)
            fqn = FullyQualifiedEntityName(args.namespace, name, "0.0.1")
            say(f"stored action /{args.namespace}/{name} ({args.kind}) at revision {rev}")
            for attempt in range(args.repeat):
                msg = controller.message(fqn, rev, params, blocking=not args.non_blocking)
                t0 = time.monotonic()
                acks = controller.invoke(0, msg, timeout_s=120)
                took = (time.monotonic() - t0) * 1000
                record = wait_for_record(activations, f"{args.namespace}/{msg.activation_id}")
                say(f"\nactivation {msg.activation_id} ({'cold' if attempt == 0 else 'warm'}, {took:.0f} ms "
                    f"publish to ack): acks {[type(a).__name__ for a in acks.acks]}")
                if not args.non_blocking:
                    say("result: " + json.dumps(result_of(acks)))
                say("logs:\n  " + "\n  ".join(record.get("logs") or ["(none)"]))
                if attempt == args.repeat - 1:
                    say("activation record:\n" + json.dumps(record, indent=2))
            return 0
        finally:
            controller.close()
            invoker.stop()


if __name__ == "__main__":
    sys.exit(main())

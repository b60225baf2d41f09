"""Hostile actions, run as real runtime processes (process backend): a response far over the
result limit, a response dripped byte by byte past the time limit, and a log line that never
ends. The invoker reads at most the limit plus one byte, keeps one wall-clock deadline for the
whole exchange, and caps logs in bytes, with OpenWhisk's truncation line in the record."""

from __future__ import annotations

import re
import time
import tracemalloc

import pytest
from pool_support import PythonOnly, Recorder, job, make_action

from invoker.containerpool.container import ContainerSpec
from invoker.containerpool.pool import ContainerPool, PoolConfig
from invoker.containerpool.process import ProcessContainerFactory
from invoker.entities import APPLICATION_ERROR, DEVELOPER_ERROR

MB = 1024 * 1024

HUGE_RESULT = """
def main(args):
    return {"s": "x" * (64 * 1024 * 1024)}
"""

# Writes an HTTP head on the runtime's own connection, then one body byte every 0.2 s: each
# socket read gets data long before a per-read timeout would fire.
DRIP = """
import gc, time
def main(args):
    handler = [o for o in gc.get_objects() if type(o).__name__ == "Handler" and not o.wfile.closed][-1]
    handler.wfile.write(b"HTTP/1.1 200 OK\\r\\nContent-Type: application/json\\r\\nContent-Length: 1000\\r\\n\\r\\n")
    handler.wfile.flush()
    for _ in range(1000):
        handler.wfile.write(b" ")
        handler.wfile.flush()
        time.sleep(0.2)
    return {}
"""

ENDLESS_LINE = """
import sys
def main(args):
    chunk = "x" * (1024 * 1024)
    for _ in range(48):
        sys.stdout.write(chunk)  # never a newline
    sys.stdout.flush()
    return {"written": 48}
"""


@pytest.fixture
def pool():
    made = ContainerPool(ProcessContainerFactory(extra_env={"__OW_INVOKER": "hostile"}), PythonOnly(),
                         PoolConfig(user_memory_mb=1024))
    made.start()
    yield made
    made.shutdown()


def traced_peak(fn):
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_huge_result_is_read_only_up_to_the_limit(pool):
    sink = Recorder()
    j = job(make_action("huge", code=HUGE_RESULT), sink)
    activation, peak = traced_peak(lambda: (pool.run(j), sink.wait_for(j, 120))[1])
    assert activation.response.status_code == APPLICATION_ERROR
    error = activation.response.result["error"]
    length = int(re.match(r"The action produced a response that exceeded the allowed length: (\d+) > 1048576 "
                          r"bytes\. The truncated response was: ", error).group(1))
    assert length > 64 * MB  # the length the runtime declared, not what was read
    assert peak < 24 * MB, f"the invoker held {peak / MB:.0f} MB for a 64 MB response"


def test_a_dripping_response_ends_at_the_time_limit(pool):
    sink = Recorder()
    j = job(make_action("drip", code=DRIP, timeout=2000), sink)
    started = time.monotonic()
    pool.run(j)
    activation = sink.wait_for(j, 60)  # a per-read timeout would read for 200 s
    assert activation.response.status_code == DEVELOPER_ERROR
    assert activation.response.result == {"error": "The action exceeded its time limits of 2000 milliseconds."}
    assert activation.annotation("timeout") is True
    assert time.monotonic() - started < 45


def test_a_log_line_that_never_ends_is_capped_in_bytes(pool):
    sink = Recorder()
    j = job(make_action("endless", code=ENDLESS_LINE, logs=1), sink)
    activation, peak = traced_peak(lambda: (pool.run(j), sink.wait_for(j, 120))[1])
    assert activation.response.status_code == 0
    assert activation.logs[-1].endswith(
        "stderr: Logs were truncated because the total bytes size exceeds the limit of 1048576 bytes.")
    assert sum(len(line) for line in activation.logs) < 2 * MB
    assert peak < 24 * MB, f"the invoker held {peak / MB:.0f} MB for a 48 MB log line"


# Replaces the runtime's GET /ready with one that writes a head, then a body byte every 0.25 s
# (on the handler's own thread: each read gets data long before a per-read timeout would fire).
DRIPPING_READY = """
import sys, time
def main(args):
    server = sys.modules["owruntime.server"]
    def do_GET(self):
        self.wfile.write(b"HTTP/1.1 200 OK\\r\\nContent-Type: application/json\\r\\nContent-Length: 1000\\r\\n\\r\\n")
        self.wfile.flush()
        for _ in range(80):
            self.wfile.write(b" ")
            self.wfile.flush()
            time.sleep(0.25)
    server.Handler.do_GET = do_GET
    return {"patched": True}
"""


def test_a_dripping_ready_answer_ends_at_the_ready_deadline():
    factory = ProcessContainerFactory(extra_env={"__OW_INVOKER": "hostile"})
    container = factory.create(ContainerSpec(name="drip-ready", kind="python:3", image="owruntime", memory_mb=128,
                                             cpu_shares=2))
    try:
        init = container.initialize({"name": "drip", "main": "main", "code": DRIPPING_READY, "binary": False,
                                     "env": {}}, 30)
        assert init.ok, init.body
        assert container.run({"value": {}}, 30).ok
        started = time.monotonic()
        assert container.wait_ready(2) is None
        assert time.monotonic() - started < 4, "a dripping /ready outlived the 2 s deadline"
    finally:
        container.destroy()
        factory.close()

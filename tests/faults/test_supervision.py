"""The supervision helpers the feed and the record writers run on (and the pool's janitor may
adopt): a dying thread is restarted, one that keeps dying is fatal exactly once, and a failed
executor job is logged."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from invoker.supervision import RestartPolicy, SupervisedThread, submit_logged


def test_a_thread_that_dies_is_restarted_then_given_up_on():
    runs: list[int] = []
    fatal: list[BaseException] = []
    gave_up = threading.Event()

    def body() -> None:
        runs.append(1)
        raise RuntimeError(f"death {len(runs)}")

    def on_fatal(error: BaseException) -> None:
        fatal.append(error)
        gave_up.set()

    thread = SupervisedThread("doomed", body, on_fatal, RestartPolicy(max_restarts=2, window_s=60, backoff_s=0.01))
    thread.start()
    assert gave_up.wait(10)
    thread.join(5)
    assert len(runs) == 3 and len(fatal) == 1 and str(fatal[0]) == "death 3"
    assert not thread.alive


def test_a_thread_that_dies_once_keeps_running():
    runs: list[int] = []
    stop = threading.Event()

    def body() -> None:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("first life")
        stop.wait(10)  # second life: runs until stopped

    thread = SupervisedThread("phoenix", body, lambda error: None, RestartPolicy(backoff_s=0.01))
    thread.start()
    while len(runs) < 2:
        threading.Event().wait(0.01)
    assert thread.alive
    stop.set()
    thread.join(5)
    assert len(runs) == 2


def test_a_failed_job_is_logged(caplog):
    caplog.set_level(logging.ERROR, logger="invoker.supervision")
    with ThreadPoolExecutor(1) as executor:
        future = submit_logged(executor, "job 7", lambda: 1 / 0)
    assert isinstance(future.exception(), ZeroDivisionError)
    assert [r.getMessage() for r in caplog.records] == ["job 7 failed"]

"""Standalone mode as a long-running service: ``./dev run`` hands signals to it (exec), and
a full disk under the embedded store is an error the API reports, not a store that says
one thing and holds another."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from disk_support import fill, small_tmpfs
from standalone_support import ROOT, Standalone, start_standalone

ECHO = "def main(args):\n    return args\n"


def descendants(pid: int) -> set[int]:
    """Every live (not zombie) process below ``pid``."""
    parents: dict[int, int] = {}
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            parents[int(stat_file.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pids: set[int]) -> set[int]:
    live = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            live.add(pid)
    return live


def test_sigterm_to_dev_run_stops_standalone_mode_and_all_its_children(tmp_path: Path) -> None:
    server = start_standalone(tmp_path, command=(str(ROOT / "dev"), "run"))
    tree: set[int] = set()
    try:
        created = requests.put(server.api("actions/echo"), json={"exec": {"kind": "python:3", "code": ECHO}},
                               auth=server.auth, timeout=30)
        assert created.status_code == 200, created.text
        answer = requests.post(server.api("actions/echo"), params={"blocking": "true", "result": "true"},
                               json={"k": 1}, auth=server.auth, timeout=60)
        assert answer.json() == {"k": 1}
        tree = descendants(server.process.pid)
        assert len(tree) >= 2, tree  # at least the broker and the action's runtime process
        server.process.send_signal(signal.SIGTERM)  # as a supervisor or `timeout` stops it
        assert server.process.wait(30) == 0
        assert any(line.startswith("stopping: ") for line in server.output), server.output[-5:]
        assert not alive(tree), f"left running: {alive(tree)}"
    finally:
        server.stop()
        for pid in alive(tree):  # what a failure left behind
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def on_small_disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Standalone, Path]]:
    """Standalone mode with its embedded store on a 1 MiB tmpfs, keeping 3 activation records."""
    tmp_path = tmp_path_factory.mktemp("small-disk")
    with small_tmpfs(tmp_path, 1024) as disk:
        server = start_standalone(tmp_path, env={"INVOKER_EMBEDDED_STORE_DIR": str(disk),
                                                 "INVOKER_EMBEDDED_ACTIVATIONS_KEEP": "3"})
        try:
            yield server, disk
        finally:
            server.stop()


def test_activation_records_are_kept_by_count(on_small_disk: tuple[Standalone, Path]) -> None:
    server, _ = on_small_disk
    store_line = next(line for line in server.output if line.strip().startswith("store:"))
    assert "activations: newest 3 kept" in store_line, store_line
    assert requests.put(server.api("actions/counted"), json={"exec": {"kind": "python:3", "code": ECHO}},
                        auth=server.auth, timeout=30).status_code == 200
    invoked = []
    for n in range(5):
        answer = requests.post(server.api("actions/counted"), params={"blocking": "true"}, json={"n": n},
                               auth=server.auth, timeout=60)
        assert answer.status_code == 200, answer.text
        invoked.append(answer.json()["activationId"])
        server.record(invoked[-1])  # written a moment after the answer: one at a time, in order
    listed = requests.get(server.api("activations"), params={"name": "counted"}, auth=server.auth, timeout=10)
    kept = [a["activationId"] for a in listed.json()]
    assert sorted(kept) == sorted(invoked[-3:]), (kept, invoked)
    gone = requests.get(server.api(f"activations/{invoked[0]}"), auth=server.auth, timeout=10)
    assert gone.status_code == 404


def test_full_disk_is_a_503_and_the_api_answers_what_the_disk_holds(
        on_small_disk: tuple[Standalone, Path]) -> None:
    server, disk = on_small_disk
    big = ECHO + "# " + "x" * (256 * 1024) + "\n"
    filler = fill(disk, 1024 - 200)  # leaves less room than the action's code
    try:
        refused = requests.put(server.api("actions/big"), json={"exec": {"kind": "python:3", "code": big}},
                               auth=server.auth, timeout=30)
        assert refused.status_code == 503, refused.text
        assert "No space left on device" in refused.json()["error"]
        assert requests.get(server.api("actions/big"), auth=server.auth, timeout=10).status_code == 404
    finally:
        filler.unlink()
    created = requests.put(server.api("actions/big"), json={"exec": {"kind": "python:3", "code": big}},
                           auth=server.auth, timeout=30)
    assert created.status_code == 200, created.text

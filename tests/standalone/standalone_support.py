"""Standalone mode as the user runs it: ``python -m invoker.standalone`` in its own
process, on a free port, with its key file in a temporary directory."""

from __future__ import annotations

import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
NODE_MODULES = ROOT / ".cache" / "node" / "node_modules"
READY = re.compile(r"^ready in ")
URL = re.compile(r"OpenWhisk REST API v1 at (http://\S+)")


class StandaloneStartError(RuntimeError):
    pass


@dataclass
class Standalone:
    """A running standalone mode: its URL, its key, and what it printed."""

    process: subprocess.Popen
    url: str
    auth_file: Path
    output: list[str] = field(default_factory=list)

    @property
    def api_key(self) -> str:
        return self.auth_file.read_text().strip()

    @property
    def auth(self) -> tuple[str, str]:
        uuid, key = self.api_key.split(":", 1)
        return uuid, key

    def api(self, path: str) -> str:
        return f"{self.url}/api/v1/namespaces/_/{path}"

    def node_env(self) -> dict[str, str]:
        return {**os.environ, "NODE_PATH": str(NODE_MODULES), "__OW_API_HOST": self.url,
                "__OW_API_KEY": self.api_key}

    def record(self, activation_id: str, timeout_s: float = 30.0) -> dict:
        """The activation record; it lands a moment after the ack, as in OpenWhisk."""
        deadline = time.monotonic() + timeout_s
        while True:
            answer = requests.get(self.api(f"activations/{activation_id}"), auth=self.auth, timeout=10)
            if answer.status_code == 200:
                return answer.json()
            if answer.status_code != 404 or time.monotonic() > deadline:
                raise AssertionError(f"activation {activation_id}: {answer.status_code} {answer.text}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


STANDALONE = (sys.executable, "-m", "invoker.standalone")


def start_standalone(workdir: Path, env: dict[str, str] | None = None, timeout_s: float = 120.0,
                     extra_args: tuple[str, ...] = (), command: tuple[str, ...] = STANDALONE) -> Standalone:
    """``command`` (``python -m invoker.standalone``, or ``./dev run``) on a free port."""
    auth_file = workdir / "guest.auth"
    process = subprocess.Popen(
        [*command, "--port", "0", "--backend", "process", "--auth-file", str(auth_file), *extra_args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, **(env or {})},
    )
    lines: queue.Queue[str | None] = queue.Queue()
    output: list[str] = []

    def pump() -> None:
        for line in process.stdout:
            output.append(line.rstrip("\n"))
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    url = None
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            line = None
        if line is None or time.monotonic() > deadline:
            process.kill()
            raise StandaloneStartError("standalone mode did not start:\n" + "\n".join(output[-40:]))
        match = URL.search(line)
        if match:
            url = match.group(1)
        if READY.match(line) and url:
            return Standalone(process, url, auth_file, output)


def node_available() -> bool:
    return shutil.which("node") is not None and (NODE_MODULES / "openwhisk" / "package.json").exists()


def running_standalone(tmp_path_factory) -> Iterator[Standalone]:
    """Body of the ``standalone`` fixture: one standalone mode for a test module; a start
    failure fails the tests (it is never a reason to skip). The clients it is driven with
    (node and the npm client, wsk) are checked by their own fixtures."""
    try:
        server = start_standalone(tmp_path_factory.mktemp("standalone"))
    except StandaloneStartError as error:
        pytest.fail(str(error), pytrace=False)
    yield server
    server.stop()

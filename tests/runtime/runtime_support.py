"""Helpers for the Python action runtime (``owruntime``) tests (fixtures in conftest.py).

Each test starts ``python -m owruntime --host 127.0.0.1 --port <free port>`` as a subprocess, the
way the invoker's process backend does, with stdout and stderr going to files, so that the tests
can count activation sentinels and check what else the streams contain (the checks of OpenWhisk's
``ActionContainer.checkStreams``). Streams are read after the runtime was stopped with SIGTERM.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUNTIME_SOURCE = REPO / "runtimes" / "python"
SENTINEL = "XXX_THE_END_OF_A_WHISK_ACTIVATION_XXX"
# The interpreter that runs the runtime (the tests themselves run under pytest's): set
# OWRUNTIME_TEST_PYTHON to check the runtime against another Python, e.g. the container's.
RUNTIME_PYTHON = os.environ.get("OWRUNTIME_TEST_PYTHON") or sys.executable


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def runtime_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("__OW_")}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(RUNTIME_SOURCE), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    env.pop("OW_RUNTIME_PORT", None)
    env.update(extra or {})
    return env


class Response:
    def __init__(self, status: int, raw: bytes, headers: dict[str, str]):
        self.status = status
        self.raw = raw
        self.headers = headers

    @property
    def json(self):
        return json.loads(self.raw)

    def __iter__(self):  # status, body = response
        yield self.status
        yield self.json if self.raw else None

    def __repr__(self) -> str:
        return f"Response({self.status}, {self.raw[:200]!r})"


class RuntimeProcess:
    """One runtime process and a keep-alive connection to it."""

    def __init__(self, directory: Path, env: dict[str, str] | None = None, args: list[str] | None = None,
                 port: int | None = None):
        self.port = port or free_port()
        directory.mkdir(parents=True, exist_ok=True)
        self.out_path = directory / f"stdout-{self.port}.txt"
        self.err_path = directory / f"stderr-{self.port}.txt"
        self._out = open(self.out_path, "wb")
        self._err = open(self.err_path, "wb")
        cmd = [RUNTIME_PYTHON, "-m", "owruntime", "--host", "127.0.0.1"]
        if args is None:
            cmd += ["--port", str(self.port)]
        else:
            cmd += args
        self.process = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=self._err,
            env=runtime_env(env),
            cwd=str(directory),
        )
        self.connection: http.client.HTTPConnection | None = None
        self.returncode: int | None = None
        self._wait_ready()

    def _wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"runtime exited with {self.process.returncode}: {self.err_path.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.01)
        raise RuntimeError("runtime did not start listening")

    def request(self, method: str, path: str, body=None, headers: dict[str, str] | None = None,
                timeout: float = 60.0) -> Response:
        if self.connection is None:
            self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        if body is not None and not isinstance(body, bytes | str):
            body = json.dumps(body)
        hdrs = {"Content-Type": "application/json", "Accept": "application/json"}
        hdrs.update(headers or {})
        try:
            self.connection.request(method, path, body=body, headers=hdrs)
            response = self.connection.getresponse()
            raw = response.read()
        except Exception:
            self.connection.close()
            self.connection = None
            raise
        result = Response(response.status, raw, {k.lower(): v for k, v in response.getheaders()})
        if response.will_close:
            self.connection.close()
            self.connection = None
        return result

    def post(self, path: str, body, **kwargs) -> Response:
        return self.request("POST", path, body, **kwargs)

    def init(self, payload) -> Response:
        return self.post("/init", payload)

    def run(self, payload) -> Response:
        return self.post("/run", payload)

    def stop(self, timeout: float = 15.0) -> tuple[str, str]:
        """SIGTERM, wait for the exit, return (stdout, stderr)."""
        if self.connection is not None:
            self.connection.close()
            self.connection = None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError("runtime did not exit after SIGTERM") from None
        self.returncode = self.process.returncode
        self._out.close()
        self._err.close()
        return (
            self.out_path.read_bytes().decode("utf-8", "replace"),
            self.err_path.read_bytes().decode("utf-8", "replace"),
        )

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._out.close()
        self._err.close()


class RuntimeContainer(RuntimeProcess):
    """The same conversation with the runtime *image*, started with testcontainers through the
    Docker API (podman in CI): what OpenWhisk's ``ActionContainer`` does with ``docker run``.
    The port is published on 127.0.0.1 only; streams are the container's log streams."""

    def __init__(self, image: str, env: dict[str, str] | None = None):
        from testcontainers.core.container import DockerContainer

        self.container = DockerContainer(image).with_kwargs(
            cap_drop=["NET_RAW", "NET_ADMIN"], security_opt=["no-new-privileges"])
        # with_bind_ports takes no host address; this is what the docker SDK accepts.
        self.container.ports = {"8080/tcp": ("127.0.0.1", None)}
        for key, value in (env or {}).items():
            self.container.with_env(key, value)
        self.container.start()
        self.port = int(self.container.get_exposed_port(8080))
        self.connection = None
        self.returncode = None
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30.0) -> None:
        wrapped = self.container.get_wrapped_container()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            wrapped.reload()
            if wrapped.status == "exited":
                raise RuntimeError(f"runtime container exited: {wrapped.logs().decode(errors='replace')}")
            try:
                # Published ports may accept before the runtime listens: ask it something.
                status, _ = self.request("GET", "/", timeout=2)
                if status:
                    return
            except OSError:
                self.connection = None
                time.sleep(0.05)
        raise RuntimeError("runtime container did not start listening")

    def stop(self, timeout: float = 15.0) -> tuple[str, str]:
        """``docker stop`` (SIGTERM, then SIGKILL after ``timeout``), return (stdout, stderr)."""
        if self.connection is not None:
            self.connection.close()
            self.connection = None
        wrapped = self.container.get_wrapped_container()
        wrapped.stop(timeout=int(timeout))
        wrapped.reload()
        self.returncode = wrapped.attrs["State"]["ExitCode"]
        out = wrapped.logs(stdout=True, stderr=False).decode("utf-8", "replace")
        err = wrapped.logs(stdout=False, stderr=True).decode("utf-8", "replace")
        self.container.stop()  # removes it
        return out, err

    def kill(self) -> None:
        try:
            self.container.stop()
        except Exception:  # already removed by stop()
            pass


# -------------------------------------------------------------------- payloads (ActionContainer.scala)


def init_payload(code: str | None, main: str = "main", env: dict | None = None, binary: bool = False) -> dict:
    """``ActionContainer.initPayload``: ``env`` is ``null`` when there is none."""
    return {"value": {"code": code, "main": main, "binary": binary, "env": env}}


def run_payload(args, other: dict | None = None) -> dict:
    return {"value": args, **(other or {})}


def check_streams(out: str, err: str, sentinel_count: int = 1) -> tuple[str, str]:
    """``ActionContainer.checkStreams``: exactly ``sentinel_count`` sentinels on each stream, each
    on a line of its own; returns both streams without the sentinel lines, stripped."""
    for name, text in (("stdout", out), ("stderr", err)):
        assert text.count(SENTINEL) == sentinel_count, f"{name} sentinels in {text!r}"
        lines = text.split("\n")
        assert sum(1 for line in lines if line == SENTINEL) == sentinel_count, f"{name}: {text!r}"
    return tuple(
        "\n".join(line for line in text.split("\n") if line != SENTINEL).strip() for text in (out, err)
    )


# -------------------------------------------------------------------- zips


def make_zip(files: dict[str, str | bytes], dirs: list[str] = (), symlinks: dict[str, str] | None = None) -> str:
    """A base64 zip archive (``ResourceHelpers.ZipBuilder.mkBase64Zip``)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in dirs:
            archive.writestr(zipfile.ZipInfo(name.rstrip("/") + "/"), b"")
        for name, content in files.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            info.create_system = 3
            archive.writestr(info, content)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return base64.b64encode(buffer.getvalue()).decode()

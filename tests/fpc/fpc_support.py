"""A real etcd server for the FPC tests: ``etcd`` (Debian's etcd-server, or ``$ETCD_BIN``) on
127.0.0.1, client and peer ports picked free, its data in its own directory.

``restart(wipe=True)`` starts it again with no data: what an etcd that lost its state (or a
new cluster at the same address) looks like to the invoker: every lease and key gone.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import requests

from invoker.embedded.child import HOST, ChildServer, ServerStartError, free_port


class EtcdStartError(ServerStartError):
    """etcd is missing, did not start, or did not answer in time."""


def etcd_binary() -> str:
    """``$ETCD_BIN``, else ``etcd`` on PATH (``./dev setup`` installs Debian's etcd-server)."""
    binary = os.environ.get("ETCD_BIN") or shutil.which("etcd")
    if not binary or not os.access(binary, os.X_OK):
        raise EtcdStartError("etcd not found: run `./dev setup` (apt's etcd-server), "
                             "or set ETCD_BIN to an etcd executable")
    return binary


class EtcdServer(ChildServer):
    what = "etcd"
    start_error = EtcdStartError

    def __init__(self, workdir: Path, port: int | None = None, start_timeout_s: float = 30.0) -> None:
        super().__init__(port, workdir / "etcd.log", start_timeout_s, cwd=workdir)
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.peer_port = free_port()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def hosts(self) -> str:
        """As ``whisk.etcd.hosts`` names it."""
        return f"{HOST}:{self.port}"

    def command(self) -> list[str]:
        peer = f"http://{HOST}:{self.peer_port}"
        return [
            etcd_binary(), "--name", "fpc-test", "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"fpc-test={peer}", "--initial-cluster-state", "new",
            # A short election: a one-member cluster leads (and serves) sooner after a start.
            "--heartbeat-interval", "50", "--election-timeout", "500",
        ]

    def probe(self, timeout_s: float) -> str | None:
        try:
            reply = requests.get(self.url + "/health", timeout=timeout_s)
            if reply.ok and reply.json().get("health") == "true":
                return None
            return f"GET /health answered {reply.status_code}: {reply.text[:200]}"
        except (requests.RequestException, ValueError) as e:
            return repr(e)

    def restart(self, wipe: bool = False) -> EtcdServer:  # type: ignore[override]
        self.stop()
        if wipe:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        return self.start()

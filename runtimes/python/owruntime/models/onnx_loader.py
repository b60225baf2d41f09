"""ONNX models on onnxruntime: one session (plain) or one session per stage (pipelined).

Pipelined: a builder thread creates the stages' sessions in order — for the CUDA execution
provider, creating a session is what copies its initializers to the GPU — while the calling
thread already runs the stages whose sessions exist. Activations stay where the stage left
them (``IOBinding`` with device outputs), so only the model's inputs and outputs cross the
host link. Partitioned: stages ``< cut`` get CPU sessions for the first call; their device
sessions are built last and take over once ready.

Sleep (:meth:`OnnxModel.sleep`): the sessions go, and with them their device memory (the CUDA
provider's arena is per session); a pipelined model keeps its stage models' bytes in host
memory, a plain one its file. The next call builds the sessions again the pipelined way.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

from .devices import Device, onnx_providers
from .errors import DeviceUnavailableError, ModelBusyError, ModelError, UnknownModelFormatError
from .onnx_split import Split
from .partition import CostModel, StageCost
from .sleep import SleepReport, clock, device_used, release_framework_cache

if TYPE_CHECKING:
    from ..resident import Registration

log = logging.getLogger("owruntime.models")


def _options(threads: int | None) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    # a spinning stage would starve the thread building the next stage's session
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        so.intra_op_num_threads = threads
    return so


def _session(path: Path | bytes, threads: int | None, providers: list,
             name: Path | None = None) -> ort.InferenceSession:
    """A session from a model file or its bytes (``name``: the file they came from)."""
    path = path if isinstance(path, bytes) else str(path)
    if name is None:
        name = Path(path) if isinstance(path, str) else Path("<bytes>")
    try:
        session = ort.InferenceSession(path, _options(threads), providers=providers)
    except Exception as e:
        if "protobuf" in str(e).lower():
            raise UnknownModelFormatError(f"{str(name)!r} is not a valid ONNX model: {e}") from e
        raise ModelError(f"onnxruntime cannot load {str(name)!r}: {e}") from e
    wanted = providers[0] if isinstance(providers[0], str) else providers[0][0]
    if session.get_providers()[0] != wanted:
        # onnxruntime falls back to the CPU, with a log line only, when the CUDA provider's
        # libraries (CUDA, cuDNN) cannot be loaded: a GPU model must not silently run on the CPU.
        raise DeviceUnavailableError(
            f"onnxruntime could not start {wanted} (it fell back to {session.get_providers()[0]}): "
            "are the CUDA and cuDNN libraries it needs on LD_LIBRARY_PATH?")
    return session


def _stop_builder(stop: threading.Event, builder: threading.Thread) -> None:
    stop.set()
    builder.join()


class OnnxModel:
    """Call with the model's inputs (positionally in graph order, or by name) -> list of arrays."""

    def __init__(
        self,
        path: Path,
        device: Device,
        *,
        mode: str = "pipelined",
        split: Split | None = None,
        cut: int = 0,
        threads: int | None = None,
    ) -> None:
        self.path = path
        self.device = device
        self.mode = mode
        self.providers = onnx_providers(device)
        self._threads = threads
        self._state = threading.Lock()  # asleep or awake, and the calls in progress
        self._active = 0
        self._asleep = False
        self._blobs: list[bytes] | None = None  # the stage models, while asleep and waking
        self.last_sleep: SleepReport | None = None
        self.registration: Registration | None = None  # set by the model cache
        if mode == "plain":
            self._plain = _session(path, threads, self.providers)
            self.inputs = [i.name for i in self._plain.get_inputs()]
            self.outputs = [o.name for o in self._plain.get_outputs()]
            return
        if mode != "pipelined" or split is None:
            raise ValueError("pipelined ONNX needs a split; mode must be 'plain' or 'pipelined'")
        self.split = split
        self.inputs, self.outputs = split.inputs, split.outputs
        n = len(split.stages)
        if not 0 <= cut <= n:
            raise ValueError(f"cut must be within 0..{n}")
        self.cut = cut
        # what each stage's successors (or the caller) still read: free the rest early
        keep: set[str] = set(split.outputs)
        self._keep: list[set[str]] = [set()] * n
        for k in reversed(range(n)):
            self._keep[k] = set(keep)
            keep |= set(split.stages[k].inputs)
        self._finalizer: weakref.finalize | None = None
        self._start_pipeline()

    def _start_pipeline(self) -> None:
        """Build the stages' sessions on a builder thread, device stages first."""
        n = len(self.split.stages)
        self._device: list[ort.InferenceSession | None] = [None] * n
        self._cpu: list[ort.InferenceSession | None] = [None] * n
        self._ready = [threading.Event() for _ in range(n)]
        self._error: BaseException | None = None
        self._stop = threading.Event()
        order = list(range(self.cut, n)) + list(range(self.cut))
        self._builder = threading.Thread(
            target=self._build, args=(order,), name="owruntime-onnx-stages", daemon=True
        )
        self._builder.start()
        if self._finalizer is not None:
            self._finalizer.detach()
        # a builder still inside onnxruntime at interpreter exit would abort the process
        self._finalizer = weakref.finalize(self, _stop_builder, self._stop, self._builder)

    def _source(self, k: int) -> Path | bytes:
        """Stage ``k``'s model: its bytes kept over a sleep, else its file."""
        blobs = self._blobs
        return blobs[k] if blobs is not None else self.split.stage_path(k)

    def _build(self, order: list[int]) -> None:
        for k in order:
            if self._stop.is_set():
                return
            try:
                self._device[k] = _session(self._source(k), self._threads, self.providers,
                                           self.split.stage_path(k))
            except BaseException as e:  # noqa: BLE001 - re-raised in the calling thread
                self._error = e
            self._ready[k].set()
            if self._error is not None:
                return
        self._blobs = None  # every session built: a wake-up's bytes are no longer needed

    def _session(self, k: int) -> tuple[ort.InferenceSession, bool]:
        if (s := self._device[k]) is not None:
            return s, self.device.is_cuda
        if k < self.cut:
            if self._cpu[k] is None:
                self._cpu[k] = _session(self._source(k), self._threads, ["CPUExecutionProvider"],
                                        self.split.stage_path(k))
            return self._cpu[k], False
        self._ready[k].wait()
        if self._error is not None:
            raise self._error
        return self._device[k], self.device.is_cuda

    def _feeds(self, args: tuple, kwargs: dict) -> dict[str, Any]:
        if len(args) > len(self.inputs):
            raise TypeError(f"model takes {len(self.inputs)} inputs ({self.inputs}), got {len(args)}")
        feeds = dict(zip(self.inputs, args, strict=False)) | kwargs
        missing = [i for i in self.inputs if i not in feeds]
        if missing:
            raise TypeError(f"missing model inputs {missing}")
        return {k: np.ascontiguousarray(v) for k, v in feeds.items()}

    def __call__(self, *args: Any, **kwargs: Any) -> list[np.ndarray]:
        with self._state:
            if self._asleep:
                self._wake()
            self._active += 1
        try:
            return self._call(args, kwargs)
        finally:
            with self._state:
                self._active -= 1

    def _call(self, args: tuple, kwargs: dict) -> list[np.ndarray]:
        feeds = self._feeds(args, kwargs)
        if self.mode == "plain":
            return self._plain.run(self.outputs, feeds)
        env: dict[str, Any] = dict(feeds)
        for k, stage in enumerate(self.split.stages):
            sess, on_device = self._session(k)
            self._run_stage(sess, on_device, stage.inputs, stage.outputs, env)
            for name in [x for x in env if x not in self._keep[k]]:
                del env[name]
        return [v.numpy() if isinstance(v, ort.OrtValue) else v for v in (env[o] for o in self.outputs)]

    def _run_stage(self, sess: ort.InferenceSession, on_device: bool, ins: list[str],
                   outs: list[str], env: dict[str, Any]) -> None:
        io = sess.io_binding()
        for name in ins:
            v = env[name]
            if isinstance(v, ort.OrtValue):
                if not on_device and v.device_name() != "cpu":
                    io.bind_cpu_input(name, v.numpy())
                else:
                    io.bind_ortvalue_input(name, v)
            else:
                io.bind_cpu_input(name, v)
        for name in outs:
            if on_device and name not in self.outputs:  # the caller's outputs come home
                io.bind_output(name, "cuda", self.device.index)
            else:
                io.bind_output(name)
        sess.run_with_iobinding(io)
        env.update(zip(outs, io.get_outputs(), strict=True))

    @property
    def nbytes(self) -> int:
        """The weights' size on the device (0 while asleep)."""
        return 0 if self._asleep else self._size()

    def _size(self) -> int:
        if self.mode == "plain":
            return self.path.stat().st_size  # initializers dominate the file
        return sum(s.nbytes for s in self.split.stages)

    @property
    def asleep(self) -> bool:
        return self._asleep

    def sleep(self) -> SleepReport:
        """Release the sessions (and their device memory), keep what rebuilds them: the stage
        models' bytes (pipelined) or the file (plain). The next call wakes the model.
        Raises :class:`ModelBusyError` while a call is in progress."""
        with self._state:
            if self._asleep and self.last_sleep is not None:
                return self.last_sleep
            if self._active:
                raise ModelBusyError(f"{self._active} call(s) of the model in progress")
            start = clock()
            used = device_used(self.device)
            size = self._size()
            if self.mode == "pipelined":
                # read before anything is released: a missing stage file leaves the model awake
                blobs = self._blobs or [self.split.stage_path(k).read_bytes()
                                        for k in range(len(self.split.stages))]
                _stop_builder(self._stop, self._builder)
                self._blobs = blobs
                self._device = [None] * len(self._device)
                self._cpu = [None] * len(self._cpu)
            else:
                self._plain = None
            self._asleep = True
            release_framework_cache(self.device)
            after = device_used(self.device)
            measured = used is not None and after is not None
            # on the CPU, or a GPU process without torch to ask: the initializers' size
            freed = max(0, used - after) if measured else size
            host = sum(len(b) for b in self._blobs) if self._blobs is not None else 0
            report = SleepReport(freed, host, measured, clock() - start)
            self.last_sleep = report
            if self.registration is not None:
                self.registration.asleep(report.host_bytes, report.freed, report.measured)
            return report

    def wake(self) -> None:
        """Start building a sleeping model's sessions now; a call wakes it by itself."""
        with self._state:
            if self._asleep:
                self._wake()

    def _wake(self) -> None:
        if self.mode == "pipelined":
            self._start_pipeline()  # stage by stage: the first stages run while later ones build
        else:
            self._plain = _session(self.path, self._threads, self.providers)
        self._asleep = False
        if self.registration is not None:
            self.registration.awake(self.nbytes)

    def wait_loaded(self) -> None:
        if self.mode == "pipelined" and not self._asleep:
            for e in self._ready:
                e.wait()
            if self._error is not None:
                raise self._error

    def measure(self, *args: Any, batch_size: int, bandwidth: float) -> CostModel:
        """Per-stage CPU and device compute times for these inputs (median of 3 runs each)."""
        self.wake()
        self.wait_loaded()
        env: dict[str, Any] = self._feeds(args, {})
        stages: list[StageCost] = []
        for k, stage in enumerate(self.split.stages):
            cpu = ort.InferenceSession(str(self.split.stage_path(k)), _options(self._threads),
                                       providers=["CPUExecutionProvider"])
            times = {}
            for label, sess, dev in (("cpu", cpu, False), ("dev", self._device[k], self.device.is_cuda)):
                samples = []
                for _ in range(4):
                    scratch = {x: (env[x].numpy() if isinstance(env[x], ort.OrtValue) and not dev else env[x])
                               for x in stage.inputs}
                    t0 = time.perf_counter()
                    self._run_stage(sess, dev, stage.inputs, stage.outputs, scratch)
                    samples.append(time.perf_counter() - t0)
                times[label] = sorted(samples[1:])[1]
            out_bytes = 0
            self._run_stage(cpu, False, stage.inputs, stage.outputs, env)
            for o in stage.outputs:
                out_bytes += env[o].numpy().nbytes
            stages.append(StageCost(stage.nbytes, times["cpu"], times["dev"], out_bytes))
        return CostModel(tuple(stages), bandwidth, batch_size)

    def close(self) -> None:
        if self.mode == "pipelined":
            _stop_builder(self._stop, self._builder)
            self._device = [None] * len(self._device)
            self._cpu = [None] * len(self._cpu)
            self._blobs = None
        else:
            self._plain = None

"""What ``StreamCopier`` asks of CUDA streams and events, in order: its copies wait for the
compute stream at every submit (after the destinations were allocated), and its copy clock
starts at the first copy, not when the copier was built. A FAKE ``torch.cuda`` stand-in records
the calls (there is no CUDA here); the copies themselves are real host tensors."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from owruntime.models.copier import StreamCopier


class FakeCuda:
    """FAKE stand-in for torch.cuda's Stream, Event, current_stream and stream: logs each call."""

    def __init__(self) -> None:
        self.log: list[tuple] = []
        self.clock = 0.0
        fake = self

        class Stream:
            def __init__(self, device=None, name: str = "side") -> None:
                self.name = name

            def wait_stream(self, other) -> None:
                fake.log.append(("wait_stream", self.name, other.name))

        class Event:
            def __init__(self, enable_timing: bool = False) -> None:
                self.at: float | None = None

            def record(self, stream) -> None:
                self.at = fake.clock
                fake.log.append(("record", stream.name, self.at))

            def synchronize(self) -> None:
                pass

            def elapsed_time(self, end) -> float:
                return (end.at - self.at) * 1e3

        self.Stream, self.Event = Stream, Event
        self.compute = Stream(name="compute")

    def current_stream(self, device=None):
        return self.compute

    @contextmanager
    def stream(self, s):
        yield


@pytest.fixture
def cuda(monkeypatch):
    fake = FakeCuda()
    for name in ("Stream", "Event", "current_stream", "stream"):
        monkeypatch.setattr(torch.cuda, name, getattr(fake, name))
    return fake


def test_each_submit_waits_for_the_compute_stream_as_it_is_after_allocation(cuda):
    copier = StreamCopier(torch.device("cpu"), timing=True)
    cuda.log.append(("allocate",))  # the loader allocates the destinations after building the copier
    src = [torch.randn(8), torch.randn(3, 3)]
    dst = [torch.empty_like(t) for t in src]
    copier.submit([(dst[0], src[0])])
    copier.submit([(dst[1], src[1])])
    waits = [i for i, entry in enumerate(cuda.log) if entry[0] == "wait_stream"]
    assert len(waits) == 2, cuda.log  # one per submit, not one at construction
    assert cuda.log.index(("allocate",)) < waits[0]
    assert all(cuda.log[i] == ("wait_stream", "side", "compute") for i in waits)
    assert all(torch.equal(d, s) for d, s in zip(dst, src, strict=True))


def test_the_copy_clock_starts_at_the_first_copy_not_at_allocation(cuda):
    copier = StreamCopier(torch.device("cpu"), timing=True)
    cuda.clock = 5.0  # allocating the destinations took 5 s of stream time: not copy time
    handle = copier.submit([(torch.empty(4), torch.ones(4))])
    cuda.clock = 5.25
    copier.submit([(torch.empty(4), torch.ones(4))])
    assert handle.at == 5.0
    assert copier.copy_seconds() == pytest.approx(0.25)

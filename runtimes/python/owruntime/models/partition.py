"""Where to cut a model between CPU and device for its first inference from host memory.

Stages ``0..cut-1`` run on the CPU from the host weights while stages ``cut..`` are copied
(in that order, over one link) and run on the device as soon as each has arrived; the CPU
stages' weights are copied last, for the calls after the first. ``cut == 0`` is the plain
pipeline; ``cut == len(stages)`` keeps the whole first call on the CPU (cheapest for small
batches on a slow link). The numbers come from measurement (:class:`StageCost` per stage,
the link's pinned bandwidth) or are injected, so the choice is testable without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class StageCost:
    nbytes: int  # weights to copy for the stage
    cpu_s: float  # its compute time on the CPU, for the batch size planned for
    device_s: float  # its compute time on the device
    out_bytes: int = 0  # activations leaving it (copied once if the cut falls after it)


@dataclass(frozen=True)
class CostModel:
    stages: tuple[StageCost, ...]
    bandwidth: float  # host-to-device bytes/s, measured with pinned memory
    batch_size: int = 1
    order: tuple[int, ...] = ()  # Torch: the unit behind each stage (execution order); () = as is

    def first_call_s(self, cut: int) -> float:
        """Simulated first-call latency with stages ``< cut`` on the CPU."""
        link = 0.0
        arrived: list[float] = [0.0] * len(self.stages)
        for i in range(cut, len(self.stages)):
            link += self.stages[i].nbytes / self.bandwidth
            arrived[i] = link
        t = sum(s.cpu_s for s in self.stages[:cut])
        if cut == len(self.stages):
            return t
        if cut > 0:
            t += self.stages[cut - 1].out_bytes / self.bandwidth
        for i in range(cut, len(self.stages)):
            t = max(t, arrived[i]) + self.stages[i].device_s
        return t


@dataclass(frozen=True)
class Plan:
    cut: int
    estimate_s: float
    estimates: tuple[float, ...] = field(repr=False)  # first_call_s for every cut 0..n
    reason: str = ""


def choose_cut(model: CostModel) -> Plan:
    """The cut with the lowest simulated first-call latency (ties: the fewer CPU stages)."""
    n = len(model.stages)
    estimates = tuple(model.first_call_s(c) for c in range(n + 1))
    cut = min(range(n + 1), key=lambda c: (estimates[c], c))
    copy_s = sum(s.nbytes for s in model.stages) / model.bandwidth
    reason = (
        f"partition: cut={cut}/{n} (stages <{cut} on cpu) est {estimates[cut] * 1e3:.2f} ms "
        f"vs all-device pipelined {estimates[0] * 1e3:.2f} ms, all-cpu {estimates[n] * 1e3:.2f} ms; "
        f"batch {model.batch_size}, copy {copy_s * 1e3:.2f} ms at {model.bandwidth / 1e9:.2f} GB/s, "
        f"device compute {sum(s.device_s for s in model.stages) * 1e3:.2f} ms, "
        f"cpu compute {sum(s.cpu_s for s in model.stages) * 1e3:.2f} ms"
    )
    return Plan(cut, estimates[cut], estimates, reason)

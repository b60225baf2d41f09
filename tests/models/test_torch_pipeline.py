"""The Torch pipeline's waits, exercised on the CPU through a copier throttled to a slow link.

``ThreadCopier(bandwidth=...)`` stands in for the host-to-device link (there is none on a CPU
machine): it copies unit by unit at the given rate, so the first forward really runs while
later units are still in flight, and a missing wait would read uninitialized weights.
"""

from __future__ import annotations

import torch
from owruntime.models.copier import ThreadCopier
from owruntime.models.devices import parse_device
from owruntime.models.torch_loader import HostModule, TorchModel
from torch import nn

CPU = parse_device("cpu")


def _chain(n: int = 6, width: int = 256) -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(*[nn.Sequential(nn.Linear(width, width), nn.Tanh()) for _ in range(n)]).eval()


def test_each_module_starts_after_its_own_weights_and_before_the_last_arrive():
    module = _chain()
    x = torch.randn(4, 256)
    with torch.inference_mode():
        expected = module(x)
    layer_bytes = 256 * 257 * 4
    copier = ThreadCopier(bandwidth=layer_bytes / 0.1)  # 0.1 s per layer: 0.6 s in all
    model = TorchModel(HostModule(module, pin=False), CPU, mode="pipelined", copier=copier)
    seen: list[tuple[bool, bool]] = []  # (own weights there, last layer's weights there)
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    for i, lin in enumerate(linears):
        def probe(_m, _a, i=i):
            seen.append((model._handles[i].is_set(), model._handles[-1].is_set()))
        lin.register_forward_pre_hook(probe)  # after the loader's hook: sees the wait's effect
    y = model(x)
    torch.testing.assert_close(y, expected)
    assert all(own for own, _ in seen)
    assert seen[0] == (True, False), "the first layer should run while the last is in flight"
    model.close()


class ReadsChildWeights(nn.Module):
    """Like nn.MultiheadAttention: uses a child's weights without calling the child."""

    def __init__(self) -> None:
        super().__init__()
        self.big = nn.Linear(512, 512)  # registered (so copied) first, used last
        self.proj = nn.Linear(512, 512)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.linear(x, self.proj.weight, self.proj.bias)  # no hook on proj fires
        return self.big(y)


def test_weights_read_without_calling_their_module_are_waited_for():
    torch.manual_seed(4)
    module = ReadsChildWeights().eval()
    x = torch.randn(2, 512)
    with torch.inference_mode():
        expected = module(x)
    copier = ThreadCopier(bandwidth=512 * 513 * 4 / 0.2)
    model = TorchModel(HostModule(module, pin=False), CPU, mode="pipelined", copier=copier)
    torch.testing.assert_close(model(x), expected)
    model.close()


def test_tied_weights_stay_one_parameter():
    emb = nn.Embedding(50, 16)
    head = nn.Linear(16, 50, bias=False)
    head.weight = emb.weight
    module = nn.Sequential(emb, head).eval()
    x = torch.tensor([[1, 2, 3]])
    with torch.inference_mode():
        expected = module(x)
    host = HostModule(module, pin=False)
    assert len(host.tensors) == 1 and len(host.tensors[0].slots) == 2
    model = TorchModel(host, CPU, mode="pipelined", copier=ThreadCopier(bandwidth=1e6))
    torch.testing.assert_close(model(x), expected)
    assert module[0].weight is module[1].weight
    model.close()
    assert module[0].weight is module[1].weight


def test_close_puts_the_host_weights_back_and_a_module_loads_once_at_a_time():
    module = _chain(2)
    host = HostModule(module, pin=False)
    model = TorchModel(host, CPU, mode="pipelined")
    try:
        TorchModel(host, CPU, mode="plain")
    except Exception as e:
        assert "already loaded" in str(e)
    else:
        raise AssertionError("a second load of one module was accepted")
    model(torch.randn(1, 256))
    model.close()
    ptrs = [p.data_ptr() for p in module.parameters()]
    assert ptrs == [t.host.data_ptr() for t in host.tensors]
    TorchModel(host, CPU, mode="plain").close()


def test_a_failed_first_call_still_waits_for_every_unit_before_later_calls():
    """A first call that raises (a bad input shape) at unit 0 must not leave units 1..7 unwaited:
    the next call would read weights the copier is still writing (CPU copier stand-in: slow link)."""
    module = _chain(8)
    x = torch.randn(4, 256)
    with torch.inference_mode():
        expected = module(x)
    copier = ThreadCopier(bandwidth=256 * 257 * 4 / 0.05)  # 0.05 s per unit: 0.4 s in all
    model = TorchModel(HostModule(module, pin=False), CPU, mode="pipelined", copier=copier)
    try:
        model(torch.randn(4, 100))  # wrong width: fails in the first Linear
    except RuntimeError as error:
        assert "shapes cannot be multiplied" in str(error)
    else:
        raise AssertionError("a bad input shape was accepted")
    assert model._waited == set(range(8))
    assert all(h.is_set() for h in model._handles)
    torch.testing.assert_close(model(x), expected)
    model.close()


def test_a_failed_partitioned_first_call_still_installs_the_device_weights():
    """With a CPU/device cut, the first call runs the first units on the host weights; whatever
    happens to it, later calls must run on the device copies (on a GPU: else a device mismatch)."""
    module = _chain(4)
    host = HostModule(module, pin=False)
    copier = ThreadCopier(bandwidth=256 * 257 * 4 / 0.05)
    model = TorchModel(host, CPU, mode="pipelined", cut=2, copier=copier)
    try:
        model(torch.randn(4, 100))
    except RuntimeError:
        pass
    device_ptrs = {v.data_ptr() for v in model._values}
    assert {p.data_ptr() for p in module.parameters()} == device_ptrs
    model.close()


def test_pinned_weights_are_views_of_one_buffer_allocated_once():
    """Pinning takes one host allocation per model, not one per weight (torch rounds each pinned
    block up to a power of two). FAKE pinned allocator stand-in: plain host bytes, counted
    (pinning itself needs a CUDA driver)."""
    torch.manual_seed(5)
    module = nn.Sequential(nn.Linear(100, 30), nn.BatchNorm1d(30), nn.Linear(30, 7, bias=False)).eval()
    module[1].running_mean.uniform_()
    x = torch.randn(3, 100)
    with torch.inference_mode():
        expected = module(x)
    originals = [t.detach().clone() for t in module.state_dict().values()]
    sizes: list[int] = []

    def fake_pinned(nbytes: int) -> torch.Tensor:
        sizes.append(nbytes)
        return torch.empty(nbytes, dtype=torch.uint8)

    host = HostModule(module, pin=True, allocate=fake_pinned)
    assert len(sizes) == 1 and host.pinned is not None
    weights = sum(t.host.nbytes for t in host.tensors)
    assert weights <= sizes[0] < weights + 256 * len(host.tensors)  # aligned, not rounded up
    base = host.pinned.data_ptr()
    for t in host.tensors:
        assert t.host.untyped_storage().data_ptr() == base  # a view of the one buffer
        assert (t.host.data_ptr() - base) % 256 == 0
    staged = [v.detach() for v in module.state_dict().values()]
    for got, want in zip(staged, originals, strict=True):
        assert got.dtype == want.dtype and torch.equal(got, want)  # num_batches_tracked: int64
    assert host.pin_seconds > 0
    model = TorchModel(host, CPU, mode="pipelined", copier=ThreadCopier(bandwidth=1e8))
    torch.testing.assert_close(model(x), expected)
    model.close()

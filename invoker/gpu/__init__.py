"""The GPU layer of the invoker.

* ``inventory`` — which GPUs the node has: detected through NVML, or declared in
  configuration where NVML is absent (CPU machines, CI), and named as such.
* ``request`` — an action's GPU request (the ``gpu`` annotation) and its defaults.
* ``mps`` — the NVIDIA MPS control daemon (start, check, stop) and the client
  environment of GPU containers; the time-slicing fallback and its reason.
* ``ledger`` — GPU memory admission: what each GPU has committed, to whom, and which
  models the runtimes report resident; chooses a GPU for a new container.
* ``layer`` — the above put together for the pool (``GpuLayer``).
* ``metrics`` — the Prometheus text exposition of the pool's GPU state.
"""

"""OpenWhisk action runtime for Python (kinds ``python:3`` and ``python:3-gpu``).

An HTTP server answering ``POST /init`` and ``POST /run`` as OpenWhisk's action-runtime contract
requires (see OpenWhisk's ``docs/actions-new.md`` and ``runtimes/python/README.md``),
compatible with today's ActionLoop Python runtime. Standard library only. Start it with
``python -m owruntime [--host 0.0.0.0] [--port 8080]``.

Modules: :mod:`owruntime.server` (HTTP, threads, signals), :mod:`owruntime.action` (loading and
running the action), :mod:`owruntime.logs` (stdout/stderr and the activation sentinel).
"""

__version__ = "0.1.0"

SENTINEL = "XXX_THE_END_OF_A_WHISK_ACTIVATION_XXX"

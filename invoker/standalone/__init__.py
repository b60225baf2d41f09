"""Standalone mode: a subset of OpenWhisk's REST API v1 in front of the invoker, so
``wsk`` and the ``openwhisk`` npm client work against one machine (``./dev run``)."""

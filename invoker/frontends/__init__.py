"""The protocol front ends over the one pool, as OpenWhisk's ``InvokerProvider`` SPI chooses them.

``base``         the ``FrontEnd`` interface and what every front end is given
``classic``      OpenWhisk 1.0: activations pushed on ``invoker{N}``, pings on ``health``
``fpc``          OpenWhisk 2.0's FPC scheduler: containers created on ``invoker{N}``, work pulled over gRPC
``completions``  what both send when an activation ends: acks to ``completed{C}`` and the record
``actions``      what both do with an action: its document fetched, its ``Job`` built

Nothing is imported here, so ``reactive`` can use the shared pieces without a cycle.
"""

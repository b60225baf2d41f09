"""A GPU invoker for Apache OpenWhisk.

The package follows the Scala invoker's seams: ``messages`` (wire types),
``messaging`` (Kafka), ``store`` (CouchDB entity and activation stores),
``containerpool`` (container factory interface, pool, per-container proxy) and
``reactive`` (what happens to one activation message).
"""

__version__ = "0.1.0"
